"""A constructed study in which every claim verdict occurs, written as real Parquet files.

pmnist (accuracy, higher is better) has a depth axis (`model.num_layers` 1 and 3) and a gamma
axis for `bn_lstm` (0.1 and 1.0 at depth 1), recorded in each trial's `config["grid"]` as the
runner does. Each trial's validation curve is 0.5 until its `reach` step and `best_valid` from
then on, so steps to target are read off `reach`. Verdicts, by hand (see test_claims.py):
- bn_lstm γ=0.1 reaches the target in fewer steps than lstm (depth 1): supported;
- bn_lstm γ=1.0 vs γ=0.1 final test metric: γ=1.0 is better, so "ends worse": contradicted;
- bn_vertical at depth 3 vs lstm, and the depth interaction: supported;
- bn_lstm vs lstm final test metric at depth 1: inconclusive;
- ln_lstm has one seed: not tested.
ptb_char (bpc, lower is better): lstm and bn_lstm, two seeds, with a lengths table (100, 400).
"""

from __future__ import annotations

import json
from pathlib import Path

from suite.core.results import CURVE, LENGTHS, SUMMARY, to_table, write_table

STEPS = [100, 200, 300, 400]
# (variant, gamma, layers): {seed: (test_at_best, reach step, best_valid, train_at_best)}
PMNIST = {
    ("lstm", None, 1): {0: (0.80, 300, 0.90, 0.92), 1: (0.82, 300, 0.90, 0.93), 2: (0.84, 400, 0.90, 0.91)},
    ("lstm", None, 3): {0: (0.80, 300, 0.90, 0.92), 1: (0.82, 400, 0.90, 0.92), 2: (0.84, 400, 0.90, 0.92)},
    ("bn_vertical", None, 1): {0: (0.70, 200, 0.88, 0.98), 1: (0.72, 300, 0.88, 0.99), 2: (0.74, 300, 0.88, 0.97)},
    ("bn_vertical", None, 3): {0: (0.90, 200, 0.92, 0.99), 1: (0.92, 200, 0.92, 0.99), 2: (0.94, 300, 0.92, 0.98)},
    ("bn_lstm", 0.1, 1): {0: (0.81, 100, 0.91, 0.92), 1: (0.86, 100, 0.91, 0.92), 2: (0.83, 200, 0.91, 0.92)},
    ("bn_lstm", 1.0, 1): {0: (0.90, 400, 0.90, 0.91), 1: (0.92, 300, 0.90, 0.91), 2: (0.94, 400, 0.90, 0.91)},
    ("ln_lstm", None, 1): {0: (0.85, 200, 0.91, 0.92)},
}
# (variant): {seed: (test_at_best, best_valid, train_at_best, bpc at length 100, at 400)}
PTB = {
    "lstm": {0: (1.50, 1.49, 1.40, 1.50, 1.70), 1: (1.52, 1.51, 1.42, 1.52, 1.74)},
    "bn_lstm": {0: (1.45, 1.44, 1.38, 1.45, 1.50), 1: (1.47, 1.46, 1.38, 1.47, 1.52)},
}


def _trial(study: Path, name: str, task: str, variant: str, seed: int, grid: dict, metric: str, mode: str,
           test: float, curve: list[float], best_valid: float, train_at_best: float, train_steps: int = 400) -> str:
    suffix = "".join(f"-{k.rsplit('.', 1)[-1]}={v}" for k, v in grid.items())
    trial = f"{task}-{variant}-s{seed}{suffix}"
    keys = {"study": name, "trial_id": trial, "task": task, "variant": variant, "seed": seed}
    rows = [dict(keys, step=step, split="valid", metric=metric, value=value, loss=1.0, stats_mode="none",
                 train_seconds=step * 0.1, examples=step * 10) for step, value in zip(STEPS, curve)]
    write_table(to_table(rows, CURVE), str(study), "curve", trial)
    options = {"gamma_init": grid["model.gamma_init"]} if "model.gamma_init" in grid else {}
    config = {"task": {"name": task, "options": {}}, "train": {"seed": seed, "steps": train_steps},
              "model": {"variant": variant, "hidden_size": 8, "num_layers": grid.get("model.num_layers", 1),
                        "options": options}, "grid": grid}
    summary = dict(keys, status="finished", metric=metric, mode=mode, best_valid=best_valid,
                   train_at_best=train_at_best, test_at_best=test, test_at_last=test, valid_at_last=curve[-1],
                   best_step=400, steps=400, train_seconds=40.0, wall_seconds=50.0, examples_per_second=100.0,
                   num_params=1000, device="cpu", config_json=json.dumps(config, sort_keys=True), env_json="{}")
    write_table(to_table([summary], SUMMARY), str(study), "summary", trial)
    return trial


def write_claims_study(root: Path, name: str = "claims-small", seeds: set[int] | None = None,
                       train_steps: int = 400) -> Path:
    """Write the study (only `seeds` when given) under root/name and return its directory."""
    study = root / name
    for (variant, gamma, layers), runs in PMNIST.items():
        grid = {"model.num_layers": layers} | ({"model.gamma_init": gamma} if gamma is not None else {})
        for seed, (test, reach, best, train) in runs.items():
            if seeds is not None and seed not in seeds:
                continue
            curve = [best if step >= reach else 0.5 for step in STEPS]
            _trial(study, name, "pmnist", variant, seed, grid, "accuracy", "max", test, curve, best, train, train_steps)
    for variant, runs in PTB.items():
        for seed, (test, best, train, at100, at400) in runs.items():
            if seeds is not None and seed not in seeds:
                continue
            curve = [2.0, 1.8, 1.6, best]
            trial = _trial(study, name, "ptb_char", variant, seed, {}, "bpc", "min", test, curve, best, train,
                           train_steps)
            keys = {"study": name, "trial_id": trial, "task": "ptb_char", "variant": variant, "seed": seed}
            rows = [dict(keys, checkpoint="best", split="test", length=n, metric="bpc", value=v,
                         stats_mode="population") for n, v in ((100, at100), (400, at400))]
            write_table(to_table(rows, LENGTHS), str(study), "lengths", trial)
    return study
