"""A small study with known values, written as real Parquet files through suite.core.results.write_table.

The numbers are chosen so that every figure in the report can be computed by hand (see
tests/unit/test_report.py): smnist has three finished seeds per arm with std 0.02 (so the
Welch interval has exactly 4 degrees of freedom) and an inference table for bn_lstm, one diverged bn_lstm seed (seed 3, which
lstm lacks: a grid hole), ptb_char has a lengths table, and one trial has curve rows but
no summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from suite.core.results import CURVE, INFERENCE, LENGTHS, SUMMARY, THROUGHPUT, to_table, write_table

STEPS = [100, 200, 300, 400]
SMNIST = {  # (variant, seed): (status, valid curve, seconds per step, best_valid, train_at_best, test_at_best, test_at_last)
    ("lstm", 0): ("finished", [0.5, 0.7, 0.91, 0.96], 0.1, 0.96, 0.98, 0.90, 0.89),
    ("lstm", 1): ("finished", [0.5, 0.7, 0.85, 0.94], 0.2, 0.94, 0.97, 0.92, 0.91),
    ("lstm", 2): ("finished", [0.5, 0.8, 0.95, 0.95], 0.1, 0.95, 0.99, 0.94, 0.93),
    ("bn_lstm", 0): ("finished", [0.8, 0.92, 0.95, 0.97], 0.1, 0.97, 0.98, 0.95, 0.95),
    ("bn_lstm", 1): ("finished", [0.85, 0.95, 0.96, 0.97], 0.1, 0.97, 0.99, 0.97, 0.96),
    ("bn_lstm", 2): ("finished", [0.8, 0.9, 0.95, 0.98], 0.1, 0.98, 0.99, 0.99, 0.97),
    ("bn_lstm", 3): ("diverged", [0.6], 0.1, 0.6, 0.5, 0.5, float("nan")),
}
PTB = {
    ("lstm", 0): ("finished", [2.0, 1.7, 1.55, 1.50], 0.5, 1.50, 1.40, 1.51, 1.52),
    ("lstm", 1): ("finished", [2.1, 1.8, 1.60, 1.52], 0.5, 1.52, 1.42, 1.53, 1.53),
    ("bn_lstm", 0): ("finished", [1.9, 1.6, 1.50, 1.45], 0.6, 1.45, 1.30, 1.46, 1.47),
    ("bn_lstm", 1): ("finished", [1.9, 1.62, 1.52, 1.47], 0.6, 1.47, 1.34, 1.48, 1.48),
}
LENGTH_VALUES = {50: 1.60, 100: 1.50, 200: 1.55}
# smnist bn_lstm test metric at the best step under each statistics mode (mode, batch size, draw, batches, value);
# the last step is 0.01 lower and validation 0.05 lower. Per seed the three draws average to 0.95 / 0.97 / 0.99
# (spread 0.02 each); `running` (0.88 / 0.90 / 0.92, mean 0.90) falls below lstm's 0.92, so the ranking changes.
INFERENCE_VALUES = {
    ("bn_lstm", seed): [("batch", 10, None, 0, 0.96 + 0.01 * seed), ("batch", 40, None, 0, 0.965 + 0.01 * seed),
                        ("running", 10, None, 0, 0.88 + 0.02 * seed)]
                       + [("reestimate", 10, d, 20, 0.95 + 0.02 * seed + (0.0, -0.01, 0.01)[d]) for d in range(3)]
    for seed in range(3)}
PARAMS = {"lstm": 40_010, "bn_lstm": 41_210}


def write_study(root: Path, name: str = "study-small") -> Path:
    """Write the study under root/name and return its directory."""
    study = root / name
    for task, metric, mode, runs in (("smnist", "accuracy", "max", SMNIST), ("ptb_char", "bpc", "min", PTB)):
        for (variant, seed), (status, valid, per_step, best, train_best, test_best, test_last) in runs.items():
            trial = f"{task}-{variant}-s{seed}"
            keys = {"study": name, "trial_id": trial, "task": task, "variant": variant, "seed": seed}
            rows = []
            stats = "reestimate" if variant.startswith("bn_") else "none"
            for step, value in zip(STEPS, valid):
                base = dict(keys, step=step, metric=metric, train_seconds=step * per_step, examples=step * 10,
                            stats_mode=stats)
                rows.append(dict(base, split="train", value=value + (0.02 if mode == "max" else -0.05), loss=1.0))
                rows.append(dict(base, split="valid", value=value, loss=1.0))
            write_table(to_table(rows, CURVE), str(study), "curve", trial)
            config = {"task": {"name": task, "options": {}}, "model": {"variant": variant, "hidden_size": 8},
                      "train": {"seed": seed, "steps": 400}}
            error = "loss became nan at step 150" if status == "diverged" else None
            summary = dict(keys, status=status, error=error, metric=metric, mode=mode, stats_mode=stats,
                           best_step=STEPS[valid.index(best)] if best in valid else None, best_valid=best,
                           valid_at_last=valid[-1], train_at_best=train_best, test_at_best=test_best,
                           test_at_last=test_last, steps=STEPS[len(valid) - 1],
                           train_seconds=STEPS[len(valid) - 1] * per_step, wall_seconds=50.0,
                           examples_per_second=10 / per_step, num_params=PARAMS[variant], device="cpu",
                           config_json=json.dumps(config, sort_keys=True), env_json="{}")
            write_table(to_table([summary], SUMMARY), str(study), "summary", trial)
            if (variant, seed) in INFERENCE_VALUES and task == "smnist":
                rows = [dict(keys, checkpoint=checkpoint, step=400, split=split, stats_mode=mode_, batch_size=size,
                             draw=draw, reestimate_batches=batches, metric=metric,
                             value=value - (0.01 if checkpoint == "last" else 0.0) - (0.05 if split == "valid" else 0),
                             loss=1.0, seconds=0.1)
                        for checkpoint in ("best", "last") for split in ("valid", "test")
                        for mode_, size, draw, batches, value in INFERENCE_VALUES[(variant, seed)]]
                write_table(to_table(rows, INFERENCE), str(study), "inference", trial)
            if task == "ptb_char":
                offset = 0.0 if variant == "bn_lstm" else 0.1
                rows = [dict(keys, checkpoint="best", split="test", length=n, metric="bpc",
                             value=v + offset + 0.01 * seed, stats_mode="population")
                        for n, v in LENGTH_VALUES.items()]
                write_table(to_table(rows, LENGTHS), str(study), "lengths", trial)
    # A trial that wrote curve rows but never its summary.
    orphan = {"study": name, "trial_id": "smnist-ln_lstm-s0", "task": "smnist", "variant": "ln_lstm", "seed": 0}
    write_table(to_table([dict(orphan, step=100, split="valid", metric="accuracy", value=0.7, loss=1.0,
                                stats_mode="none", train_seconds=10.0, examples=1000)], CURVE),
                str(study), "curve", orphan["trial_id"])
    bench = [dict(study="bench", trial_id="bench-1", task="", variant=v, shape="smnist", steps=784, batch=100,
                  input_size=1, hidden_size=100, direction="fwd+bwd", device="cpu", seconds_median=m,
                  seconds_min=m * 0.9, rounds=5, ratio_to_cudnn=m / 0.2, peak_memory_bytes=2**20 * 3, env_json="{}")
             for v, m in (("cudnn_lstm", 0.2), ("bn_lstm", 0.5))]
    write_table(to_table(bench, THROUGHPUT), str(study), "throughput", "bench-1")
    return study


def benchmark_json(path: Path) -> Path:
    """A pytest-benchmark JSON in the format `--benchmark-json` writes (trimmed to the fields it always has)."""
    entry = {"group": "smnist fwd+bwd cpu", "name": "test_fwd_bwd[bn_lstm-smnist]", "fullname": "tests/bench/x.py::t",
             "params": {"variant": "bn_lstm"}, "param": "bn_lstm-smnist",
             "extra_info": {"ratio_to_cudnn": 2.5, "variant": "bn_lstm"},
             "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0,
                         "min_time": 5e-06, "warmup": False},
             "stats": {"min": 0.45, "max": 0.6, "mean": 0.5, "stddev": 0.05, "rounds": 5, "median": 0.5,
                       "iqr": 0.05, "q1": 0.47, "q3": 0.52, "iqr_outliers": 0, "stddev_outliers": 1, "outliers": "1;0",
                       "ld15iqr": 0.45, "hd15iqr": 0.6, "ops": 2.0, "total": 2.5, "iterations": 1}}
    data = {"machine_info": {"node": "host-x", "processor": "x86_64", "machine": "x86_64",
                             "python_implementation": "CPython", "python_version": "3.11.9", "system": "Linux",
                             "cpu": {"brand_raw": "Test CPU"}, "torch": "2.13.0"},
            "commit_info": {"id": "abc"}, "benchmarks": [entry], "datetime": "2026-01-01T00:00:00", "version": "5.1.0"}
    path.write_text(json.dumps(data))
    return path


def write_gradient_flow(study: Path) -> None:
    """A hand-made gradient_flow table (the shape `suite diagnose gradient-flow` writes)."""
    from suite.core.results import GRADIENT_FLOW

    keys = {"study": "diagnose", "trial_id": "gradient-flow", "task": "smnist", "variant": "bn_tanh_rnn", "seed": 0,
            "source": "random inputs (test)", "config_json": "{}"}
    rows = [dict(keys, figure="1a", gamma=g, t=t, value=v, q25=v, q75=v)
            for g, values in ((0.1, [1e-3, 2e-3, 1e-2]), (1.0, [1e-40, 1e-20, 1e-2])) for t, v in enumerate(values)]
    rows += [dict(keys, figure="1b", sigma=s, value=m, q25=m - 0.1, q75=min(m + 0.1, 1.0))
             for s, m in ((0.0, 1.0), (0.5, 0.8), (1.0, 0.6))]
    write_table(to_table(rows, GRADIENT_FLOW), str(study), "gradient_flow", "gradient-flow")
