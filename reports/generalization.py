"""Generalization: the train/validation gap at the best step, and evaluation beyond the training length.

The gap is signed so that positive means the validation metric is worse than the training
metric at the selected step: train - valid for "max" metrics, valid - train for "min"
metrics (the training value is the mean over the interval before that evaluation).
The `lengths` table holds evaluations of the best/last checkpoint on sequences of other
lengths (paper Figure 3b: PTB models trained on length 100, evaluated on 50..1000 with the
population statistics of step T_max reused beyond it); it is aggregated here with one
pyarrow group-by.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reports.load import StudyTables, TrialSummary
from reports.stats import Summary, summarize


def gap(trials: list[TrialSummary]) -> Summary:
    """Train/validation gap at the best step over finished trials (positive = valid worse than train)."""
    values = []
    for t in trials:
        train, valid = t.row["train_at_best"], t.row["best_valid"]
        if train is None or valid is None:
            continue
        values.append(train - valid if t.row["mode"] == "max" else valid - train)
    return summarize(values)


def length_table(study: StudyTables, task: str) -> pa.Table | None:
    """Mean/std/count over seeds of the lengths table for one task: arm, checkpoint, split, length."""
    if study.lengths is None:
        return None
    trials = {t.trial_id: t.arm for t in study.trials.values() if t.task == task}
    if not trials:
        return None
    ids = sorted(trials)
    table = study.lengths.filter(pc.and_(pc.is_in(study.lengths["trial_id"], value_set=pa.array(ids, pa.string())),
                                         pc.is_finite(study.lengths["value"])))
    if table.num_rows == 0:
        return None
    codes = pc.index_in(table["trial_id"], value_set=pa.array(ids, pa.string())).to_numpy(zero_copy_only=False)
    arms = np.array([trials[i] for i in ids], dtype=object)
    table = table.append_column("arm", pa.array(arms[codes].tolist(), pa.string()))
    grouped = table.group_by(["arm", "checkpoint", "split", "length"]).aggregate([
        ("value", "mean"), ("value", "stddev", pc.VarianceOptions(ddof=1)), ("value", "count")])
    return grouped.sort_by([("checkpoint", "ascending"), ("split", "ascending"), ("arm", "ascending"),
                            ("length", "ascending")])
