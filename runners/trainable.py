"""The only Tune adapter: one trial of a study runs `suite.core.train.fit` inside a Tune function trainable.

Each evaluation of `fit` becomes one `tune.report` with a checkpoint holding the training
state *and every curve row so far*; after a crash Tune restarts the trial from that
checkpoint, so the curve holds each (trial, step, split) row exactly once. The trial writes
its own Parquet files (curve after every evaluation; summary, inference statistics and the
best and last models under `models/` at the end) to the results location with pyarrow filesystems, so results reach a shared path or an object store from
whichever node ran it. A trial whose summary already says it ended (written by an attempt
whose last report the driver never heard: Ctrl-C or a kill in between) reports that summary
instead of training again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from runners.study import from_dict, make_trial_id, search_trial_id, tuned_trial_id
from suite.core.checkpoints import save_models
from suite.core.errors import SuiteError
from suite.core.provenance import write_run
from suite.core.results import CURVE, read_trial_row, to_table, write_table
from suite.core.train import Evaluation, fit
from tasks.base import create

# Keys of the dict Tune passes to a trial (`param_space` in runners.local): the study, the results
# location and the trial's point, itself a dict of task, variant, seed and grid values. One axis of
# points (not task x variant x seed x grid) because a variant may have its own grid ([variant_grid]).
STUDY, RESULTS, POINT = "study", "results", "point"
TASK, VARIANT, SEED, GRID = "task", "variant", "seed", "grid"
# Tuned studies (runners.phases): the phase; a search trial's sample {"index": i, "point": {...}} (the
# index is absent when a Tune searcher draws the point: the trial's name then carries it); the final
# phase's best points {task: {variant: point}}.
PHASE, SAMPLE, TUNED = "phase", "sample", "tuned"
STATE_FILE = "state.pt"
# Trial statuses that end a trial for good: --resume skips them ("stopped": by the ASHA scheduler).
DONE = ("finished", "diverged", "stopped")


def point(task: str, variant: str, seed: int, grid: Mapping[str, Any]) -> dict[str, Any]:
    """The grid point of one trial as Tune carries it."""
    return {TASK: task, VARIANT: variant, SEED: seed, GRID: dict(grid)}


def point_of(config: Mapping[str, Any]) -> tuple[str, str, int, dict[str, Any]]:
    """(task, variant, seed, grid) of the trial whose Tune config is `config`."""
    p = config[POINT]
    return p[TASK], p[VARIANT], p[SEED], dict(p[GRID])


def trial_identity(params: Mapping[str, Any], index: int | None = None) -> tuple[str, int, dict[str, Any]]:
    """(trial id, training seed, config point) of a trial from its Tune config; `index` is the search
    sample's number when the config does not carry it (drawn by a Tune searcher)."""
    task, variant, seed, grid = point_of(params)
    phase = params.get(PHASE)
    if phase == "search":
        sample = params[SAMPLE]
        index = sample.get("index", index)
        if index is None:
            raise ValueError("a search trial without a sample index")
        return search_trial_id(task, variant, index), seed, dict(sample["point"])
    if phase == "final":
        return tuned_trial_id(task, variant, seed), seed, dict(params[TUNED][task][variant])
    return make_trial_id(task, variant, seed, grid), seed, grid


def recorded_point(phase: str | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """Where a trial's config record keeps its point: under "grid" (search trials and grid studies: it tells
    arms apart), under "tuned" for final trials (one arm per variant, compared at its own tuned settings)."""
    return {"tuned" if phase == "final" else "grid": dict(values)}


def name_index(name: str) -> int | None:
    """The sample index in a search trial's name (`...-search007` -> 7), else None."""
    head, _, digits = name.rpartition("-search")
    return int(digits) if head and digits.isdigit() else None


def study_root(results: str, study: str) -> str:
    """Where a study's tables live: <results>/<study> (a local path or a URI)."""
    return f"{results.rstrip('/')}/{study}"


class EarlyStopper:
    """Stop after `patience` evaluations without a better validation metric (0 disables it)."""

    def __init__(self, patience: int, min_steps: int, mode: str):
        self.patience, self.min_steps, self.mode = patience, min_steps, mode
        self.best: float | None = None
        self.stale = 0

    def update(self, step: int, value: float) -> bool:
        """Record one validation value; True when training should stop."""
        better = math.isfinite(value) and (self.best is None or
                                           (value > self.best if self.mode == "max" else value < self.best))
        if better:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        return self.patience > 0 and step >= self.min_steps and self.stale >= self.patience

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps."""
        return {"best": self.best, "stale": self.stale}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore from a checkpoint."""
        self.best, self.stale = state["best"], state["stale"]


def final_metrics(summary: Mapping[str, Any], total_steps: int, fit_seconds: float) -> dict[str, Any]:
    """The last `tune.report` of a trial, from its summary row."""
    return {"step": summary["steps"], "total_steps": total_steps, "valid": summary["valid_at_last"],
            "best_valid": summary["best_valid"], "best_step": summary["best_step"],
            "test_at_best": summary["test_at_best"], "status": summary["status"], "fit_seconds": fit_seconds,
            "pid": os.getpid()}


def written_end(root: str, trial_id: str, total_steps: int) -> dict[str, Any] | None:
    """The last report of a trial whose own summary says it ended (finished or diverged); else None.
    The driver takes its status from it, and a restarted trial reports it (module doc)."""
    written = read_trial_row(root, "summary", trial_id)
    if written is None or written["status"] not in DONE:
        return None
    return final_metrics(written, total_steps, written["wall_seconds"])


def merge_rows(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Curve rows keyed by (step, split): a re-reported point replaces the old one, never duplicates it."""
    keyed = {(row["step"], row["split"]): row for row in rows}
    keyed.update({(row["step"], row["split"]): row for row in new})
    return [keyed[key] for key in sorted(keyed)]


def train_trial(params: dict[str, Any]) -> None:
    """Tune function trainable: resolve the trial's config, fit with checkpoints, write its tables."""
    import ray  # Ray loads only where a trial runs: the driver's --dry-run and plan never start it
    from ray import tune

    study = from_dict(params[STUDY])
    phase = params.get(PHASE)
    trial_id, seed, values = trial_identity(params, name_index(tune.get_context().get_trial_name() or ""))
    task_name, variant, _, _ = point_of(params)
    trial = dataclasses.replace(study.resolve_trial(task_name, variant, seed, values), trial_id=trial_id, phase=phase)
    config = trial.config
    root = study_root(params[RESULTS], study.name)
    keys = trial.keys(study.name)
    ended = written_end(root, trial.trial_id, config.train.steps)
    if ended is not None:  # an earlier attempt ended and wrote its tables: keep them
        tune.report(ended)
        return
    # Ray sets OMP_NUM_THREADS for the worker; make torch agree with the CPUs the trial asked for.
    torch.set_num_threads(max(1, int(study.resources.cpu)))
    task = create(config.task.name, config.task.options, config.data.dir, config.data.path)
    stopper = EarlyStopper(study.early_stopping.patience, study.early_stopping.min_steps, task.mode)
    rows: list[dict[str, Any]] = []
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / STATE_FILE, weights_only=False)
        rows, resume = saved["rows"], saved["fit"]
        stopper.load(saved["stopper"])

    last: dict[str, Any] = {"step": 0, "total_steps": config.train.steps, "status": "failed"}

    def on_report(report: Evaluation) -> bool:
        nonlocal rows
        rows = merge_rows(rows, [dict(keys, **row) for row in report.rows])
        valid = report.rows[-1]["value"]
        stop = stopper.update(report.step, valid)
        metrics = {"step": report.step, "total_steps": report.total_steps, "valid": valid,
                   "train_loss": report.rows[0]["loss"], "best_valid": stopper.best, "status": "running"}
        with _writing(root):
            # The curve so far, rewritten whole (atomically): readable while the study runs.
            write_table(to_table(rows, CURVE), root, "curve", trial.trial_id)
            with tempfile.TemporaryDirectory() as folder:
                torch.save({"fit": report.checkpoint(), "rows": rows, "stopper": stopper.state()},
                           Path(folder) / STATE_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        last.update(step=report.step, valid=valid, best_valid=stopper.best)
        return stop

    try:
        started = time.perf_counter()
        result = fit(task, config, on_report=on_report, resume=resume)
        fit_seconds = time.perf_counter() - started
        summary = dict(result.summary)
        recorded = config.to_dict() | {"task_facts": task.describe()} | recorded_point(phase, trial.grid)
        with _writing(root):
            # Models first: a summary that says "finished" promises its models are there (written_end skips it).
            save_models(root, trial.trial_id, result.models, recorded,
                        {"best": summary["best_step"], "last": summary["steps"]})
            write_run(root, keys, rows, summary, recorded, result.lengths,
                      where={"ray_node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()},
                      inference=result.inference)
    except SuiteError as error:
        # Not retried: a retry from the last checkpoint meets the same full disk or bad setting. The trial
        # ends here, `failed` with the reason; `--resume` starts it again from that checkpoint (runners.local).
        tune.report(last | {"error": str(error), "pid": os.getpid()})
        return
    tune.report(final_metrics(summary | {"status": result.status}, config.train.steps, fit_seconds))


@contextlib.contextmanager
def _writing(root: str) -> Iterator[None]:
    """Turn a failed write of the trial's tables or checkpoint (full disk, read-only, quota) into a
    SuiteError naming the cause and the fix."""
    try:
        yield
    except OSError as error:
        raise SuiteError(f"cannot write results under {root}: {error}; free space or fix the location, "
                         f"then run the study again with --resume") from None
