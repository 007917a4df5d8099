"""A small tuned study with known values, written as real Parquet files through suite.core.results.

Task `smnist` (accuracy, higher is better), variants lstm and bn_lstm, four search trials each
over `optim.lr` (log-uniform) and, for bn_lstm, `model.gamma_init`; bn_lstm's search002 was
stopped by ASHA and search003 diverged; lstm's best trial by validation (search001) is not its
best by test (search002), so choosing by test would show. Two final seeds per variant.
"""

from __future__ import annotations

import json
from pathlib import Path

from suite.core.results import CURVE, SUMMARY, to_table, write_table

# (variant, index): (status, steps, best_valid, test_at_best, point)
SEARCH = {
    ("lstm", 0): ("finished", 400, 0.80, 0.79, {"optim.lr": 1e-4}),
    ("lstm", 1): ("finished", 400, 0.92, 0.85, {"optim.lr": 1e-3}),
    ("lstm", 2): ("finished", 400, 0.90, 0.95, {"optim.lr": 3e-3}),
    ("lstm", 3): ("finished", 400, 0.60, 0.60, {"optim.lr": 1e-2}),
    ("bn_lstm", 0): ("finished", 400, 0.85, 0.84, {"model.gamma_init": 0.1, "optim.lr": 1e-4}),
    ("bn_lstm", 1): ("finished", 400, 0.94, 0.93, {"model.gamma_init": 0.5, "optim.lr": 1e-3}),
    ("bn_lstm", 2): ("stopped", 100, 0.50, None, {"model.gamma_init": 0.9, "optim.lr": 3e-3}),
    ("bn_lstm", 3): ("diverged", 200, float("nan"), None, {"model.gamma_init": 0.3, "optim.lr": 1e-2}),
}
FINAL = {("lstm", 0): 0.91, ("lstm", 1): 0.93, ("bn_lstm", 0): 0.95, ("bn_lstm", 1): 0.96}


def write_tuned_study(root: Path, name: str = "study-tuned") -> Path:
    """Write the study (and its study.json record, as the runner does) under root/name; return its folder."""
    study = root / name
    best = {"lstm": SEARCH[("lstm", 1)][4], "bn_lstm": SEARCH[("bn_lstm", 1)][4]}
    trials = [(f"smnist-{v}-search{i:03d}", v, 0, "search", status, steps, valid, test, {"grid": point})
              for (v, i), (status, steps, valid, test, point) in SEARCH.items()]
    trials += [(f"smnist-{v}-s{seed}-tuned", v, seed, "final", "finished", 400, valid, valid - 0.01, {"tuned": best[v]})
               for (v, seed), valid in FINAL.items()]
    for trial, variant, seed, phase, status, steps, valid, test, extra in trials:
        keys = {"study": name, "trial_id": trial, "task": "smnist", "variant": variant, "seed": seed, "phase": phase}
        point = extra.get("grid") or extra.get("tuned")
        config = {"task": {"name": "smnist", "options": {}}, "model": {"variant": variant, "hidden_size": 8},
                  "optim": {"lr": point["optim.lr"]}, "train": {"seed": seed, "steps": 400}} | extra
        curve = [dict(keys, step=step, split="valid", metric="accuracy", value=valid, loss=1.0, stats_mode="none",
                      train_seconds=step * 0.1, examples=step * 10) for step in range(100, steps + 1, 100)]
        write_table(to_table(curve, CURVE), str(study), "curve", trial)
        summary = dict(keys, status=status, error="stopped by ASHA at step 100" if status == "stopped" else None,
                       metric="accuracy", mode="max", stats_mode="none", best_step=steps, best_valid=valid,
                       valid_at_last=valid, train_at_best=valid, test_at_best=test, test_at_last=test, steps=steps,
                       train_seconds=steps * 0.1, wall_seconds=50.0, examples_per_second=100.0, num_params=1000,
                       device="cpu", config_json=json.dumps(config, sort_keys=True), env_json="{}")
        write_table(to_table([summary], SUMMARY), str(study), "summary", trial)
    record = {"study": {"search": {"space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
                                   "variants": {"bn_lstm": {"model.gamma_init": {"uniform": [0.05, 1.0]}}}}}}
    (study / "study.json").write_text(json.dumps(record))
    return study
