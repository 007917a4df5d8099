"""Convergence speed from the validation curves (paper Figures 2-4: BN-LSTM converges faster).

Per trial, on its exact validation points (`curve` rows with split "valid", finite values):
- steps and training seconds until the validation metric first reaches the task's target
  (>= for "max" metrics, <= for "min" metrics); a trial that never does is counted as such;
- the area under the validation curve, normalized: the trapezoid integral of the metric over
  steps divided by the step span from the trial's first to its last validation point, i.e.
  the step-weighted mean validation metric, in the metric's units (a single point is its value).

The target of a task is, unless given: `fraction` x the best LSTM result for "max" metrics and
best / `fraction` for "min" metrics, where the best LSTM result is the mean over seeds of the
best validation value of the `lstm` arm (the best such arm when a grid has several). All
per-row work is pyarrow compute and numpy over whole columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reports.load import BASELINE, StudyTables
from reports.stats import summarize

DEFAULT_FRACTION = 0.95


@dataclass(frozen=True)
class Target:
    """The validation value a task's trials race to, and the sentence that says where it comes from."""

    value: float
    rule: str


@dataclass(frozen=True)
class TrialSpeed:
    """One trial's steps and seconds to target (NaN if never reached) and its normalized AUC."""

    steps: float
    seconds: float
    auc: float


def valid_points(study: StudyTables) -> pa.Table:
    """Finite validation points of summarized trials, sorted by trial and step."""
    empty = pa.table({"trial_id": pa.array([], pa.string()), "step": pa.array([], pa.int64()),
                      "value": pa.array([], pa.float64()), "train_seconds": pa.array([], pa.float64())})
    if study.curve is None or not study.trials:
        return empty
    curve = study.curve
    keep = pc.and_(pc.and_(pc.equal(curve["split"], "valid"), pc.is_finite(curve["value"])),
                   pc.is_in(curve["trial_id"], value_set=pa.array(sorted(study.trials), pa.string())))
    table = curve.filter(pc.fill_null(keep, False)).select(["trial_id", "step", "value", "train_seconds"])
    return table.sort_by([("trial_id", "ascending"), ("step", "ascending")])


def _codes(points: pa.Table, ids: list[str]) -> np.ndarray:
    return pc.index_in(points["trial_id"], value_set=pa.array(ids, pa.string())).to_numpy(zero_copy_only=False)


def task_target(study: StudyTables, task: str, fraction: float = DEFAULT_FRACTION,
                given: float | None = None) -> Target | None:
    """The task's target: `given`, else a fraction of the best mean LSTM validation result."""
    trials = [t for t in study.trials.values() if t.task == task]
    if not trials:
        return None
    metric, mode = study.metric(task)
    if given is not None:
        return Target(given, f"validation {metric} {'>=' if mode == 'max' else '<='} {given:g} (given)")
    candidates = [a for a in study.arms(task) if study.trials_of(task, a)[0].variant == BASELINE]
    basis = f"`{BASELINE}`"
    if not candidates:
        candidates, basis = study.arms(task), "any arm (this task has no `lstm` trials)"
    best, best_arm, best_n = None, None, 0
    for arm in candidates:
        s = summarize([t.row["best_valid"] for t in study.trials_of(task, arm, finished=True)])
        if s.n and (best is None or (s.mean > best if mode == "max" else s.mean < best)):
            best, best_arm, best_n = s.mean, arm, s.n
    if best is None:
        return None
    value = fraction * best if mode == "max" else best / fraction
    op = ">=" if mode == "max" else "<="
    how = f"{fraction:g} x" if mode == "max" else f"1/{fraction:g} x"
    return Target(value, f"validation {metric} {op} {how} the best mean validation {metric} of {basis} "
                         f"(`{best_arm}`, mean over n={best_n} finished seeds)")


def trial_speeds(points: pa.Table, targets: dict[str, tuple[float, str]]) -> dict[str, TrialSpeed]:
    """Steps/seconds to target and normalized AUC for every trial in `targets` (trial -> (target, mode))."""
    ids = sorted(targets)
    out: dict[str, TrialSpeed] = {}
    if not ids:
        return out
    points = points.filter(pc.is_in(points["trial_id"], value_set=pa.array(ids, pa.string())))
    codes = _codes(points, ids)
    step = points["step"].to_numpy().astype(np.float64)
    value = points["value"].to_numpy()
    seconds = points["train_seconds"].to_numpy(zero_copy_only=False).astype(np.float64)
    goal = np.array([targets[i][0] for i in ids], dtype=np.float64)
    sign = np.array([1.0 if targets[i][1] == "max" else -1.0 for i in ids])
    reached = sign[codes] * value >= sign[codes] * goal[codes]
    # points are sorted by (trial, step): the first reached row of a trial is its first occurrence
    hit_codes, hit_rows = np.unique(codes[reached], return_index=True)
    hit_rows = np.flatnonzero(reached)[hit_rows]
    first_steps = np.full(len(ids), np.nan)
    first_seconds = np.full(len(ids), np.nan)
    first_steps[hit_codes], first_seconds[hit_codes] = step[hit_rows], seconds[hit_rows]
    # trapezoids between consecutive points of the same trial
    same = codes[1:] == codes[:-1]
    area = np.where(same, (step[1:] - step[:-1]) * (value[1:] + value[:-1]) / 2.0, 0.0)
    total = np.bincount(codes[1:], weights=area, minlength=len(ids)) if len(codes) > 1 else np.zeros(len(ids))
    present, first_row = np.unique(codes, return_index=True)
    last_row = len(codes) - 1 - np.unique(codes[::-1], return_index=True)[1]
    span = np.full(len(ids), np.nan)
    only = np.full(len(ids), np.nan)
    span[present] = step[last_row] - step[first_row]
    only[present] = value[first_row]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(span > 0, total / span, only)
    for i, trial in enumerate(ids):
        out[trial] = TrialSpeed(float(first_steps[i]), float(first_seconds[i]), float(auc[i]))
    return out


@dataclass(frozen=True)
class ArmSpeed:
    """Steps/seconds to target over an arm's trials: median, min, max over those that reached it."""

    reached: int
    total: int
    steps: tuple[float, float, float]
    seconds: tuple[float, float, float]
    auc_mean: float
    auc_std: float
    auc_n: int


def _spread(values: list[float]) -> tuple[float, float, float]:
    x = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    return (float(np.median(x)), float(x.min()), float(x.max()))


def arm_speed(speeds: list[TrialSpeed], finished: list[TrialSpeed]) -> ArmSpeed:
    """Aggregate an arm: time to target over all its trials, AUC over its finished ones."""
    auc = summarize([s.auc for s in finished])
    return ArmSpeed(sum(math.isfinite(s.steps) for s in speeds), len(speeds), _spread([s.steps for s in speeds]),
                    _spread([s.seconds for s in speeds]), auc.mean, auc.std, auc.n)


def mean_curves(points: pa.Table, arm_of: dict[str, str]) -> dict[str, pa.Table]:
    """Per arm: step, mean and sample std of the validation value over trials, trial count, mean seconds."""
    ids = sorted(arm_of)
    arms = sorted(set(arm_of.values()))
    if not ids or points.num_rows == 0:
        return {}
    points = points.filter(pc.is_in(points["trial_id"], value_set=pa.array(ids, pa.string())))
    arm_index = np.array([arms.index(arm_of[i]) for i in ids], dtype=np.int64)
    table = pa.table({"arm": arm_index[_codes(points, ids)], "step": points["step"],
                      "value": points["value"], "train_seconds": points["train_seconds"]})
    grouped = table.group_by(["arm", "step"]).aggregate([
        ("value", "mean"), ("value", "stddev", pc.VarianceOptions(ddof=1)), ("value", "count"),
        ("train_seconds", "mean")]).sort_by([("arm", "ascending"), ("step", "ascending")])
    out = {}
    for index, arm in enumerate(arms):
        part = grouped.filter(pc.equal(grouped["arm"], index))
        if part.num_rows:
            out[arm] = part.drop_columns(["arm"])
    return out
