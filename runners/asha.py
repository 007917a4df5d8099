"""ASHA (Li et al. 2020, asynchronous successive halving) for a tuned study's search phase (runners.phases).

Tune's ASHAScheduler, plus two things the suite needs: a trial it stops gets a summary row with
status `stopped`, written by the driver when it decides (the trial itself is ended by Tune
and never writes one), and a trial at its last evaluation is never stopped (it finishes by
itself and writes its own tables, test scores included).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from runners.local import _task_metric
from runners.phases import _mode, trim_curve
from runners.progress import trial_name
from runners.study import from_dict
from runners.trainable import name_index, point_of, recorded_point, trial_identity
from suite.core.provenance import environment
from suite.core.results import SUMMARY, to_table, write_table


class StoppingASHA(ASHAScheduler):
    """ASHA that writes a `stopped` summary row for each trial it stops, and never stops a trial at its
    last evaluation (that trial finishes by itself and writes its own tables, test scores included)."""

    def __init__(self, root: str, study: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.root, self.study = root, study

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        """ASHA's decision at an evaluation point; a stop is recorded before Tune acts on it."""
        if result.get("step", 0) >= result.get("total_steps", math.inf) or result.get("status") != "running":
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            write_stopped(self.root, self.study, trial.config, trial_name(trial), int(result["step"]))
        return decision


def write_stopped(root: str, study_dict: dict[str, Any], config: dict[str, Any], name: str, step: int) -> None:
    """The summary row of a trial ASHA stopped after `step`, from its curve rows up to that step."""
    study = from_dict(study_dict)
    trial_id, seed, point = trial_identity(config, name_index(name))
    task, variant, _, _ = point_of(config)
    trial = study.resolve_trial(task, variant, seed, point)
    mode = _mode(trial.task)
    curve = trim_curve(root, trial_id, step)
    valid = [r for r in curve if r["split"] == "valid" and r["value"] is not None and math.isfinite(r["value"])]
    best = (max if mode == "max" else min)(valid, key=lambda r: r["value"]) if valid else None
    train = {r["step"]: r for r in curve if r["split"] == "train"}
    last = max(curve, key=lambda r: r["step"]) if curve else None
    row = dict(dataclasses.replace(trial, trial_id=trial_id, phase="search").keys(study.name),
               status="stopped", error=f"stopped by ASHA at step {step}", metric=_task_metric(trial.task),
               mode=mode, stats_mode=last["stats_mode"] if last else None,
               best_step=best["step"] if best else None, best_valid=best["value"] if best else None,
               valid_at_last=next((r["value"] for r in curve if r["split"] == "valid" and r["step"] == step), None),
               train_at_best=train[best["step"]]["value"] if best and best["step"] in train else None,
               steps=step, train_seconds=last["train_seconds"] if last else None,
               config_json=json.dumps(trial.config.to_dict() | recorded_point("search", point), sort_keys=True),
               env_json=json.dumps(environment(), sort_keys=True))
    write_table(to_table([row], SUMMARY), root, "summary", trial_id)
