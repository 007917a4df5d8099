"""The report's "Inference statistics" section: each BN arm's test metric under every way of taking
batch-norm statistics at evaluation (the `inference` table, written by `suite.core.inference`), and
whether its ranking against `lstm` changes with the mode (issue 13).

Per trial and mode, re-estimation draws are averaged into one value per seed; the table shows
mean ± std over seeds, and the spread over draws (max − min within a seed, mean over seeds and
the largest). Tables in, numbers out; no torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from reports.stats import Summary, summarize


@dataclass(frozen=True)
class ModeResult:
    """One mode of one arm at one checkpoint: per-seed values and the spread over draws."""

    label: str  # e.g. "batch (64)", "reestimate (20 batches, 3 draws)", "running"
    key: tuple  # sort key: batch sizes first, then running, then reestimate
    per_seed: Summary
    values: tuple[float, ...]
    draw_spread: tuple[float, float] | None  # (mean over seeds, largest) of max − min over draws


def _label(row: dict, draws: int) -> tuple[str, tuple]:
    mode = row["stats_mode"]
    if mode == "batch":
        return f"batch ({row['batch_size']})", (0, row["batch_size"])
    if mode == "running":
        return "running", (1, 0)
    return f"reestimate ({row['reestimate_batches']} batches, {draws} draws)", (2, row["reestimate_batches"])


def modes(table: pa.Table | None, trial_ids: Sequence[str], checkpoint: str = "best",
          split: str = "test") -> list[ModeResult]:
    """Every mode measured for these trials at `checkpoint` on `split`, in display order."""
    if table is None or not trial_ids:
        return []
    wanted = set(trial_ids)
    rows = [r for r in table.to_pylist()
            if r["trial_id"] in wanted and r["checkpoint"] == checkpoint and r["split"] == split]
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        ident = (r["stats_mode"], r["batch_size"] if r["stats_mode"] == "batch" else None, r["reestimate_batches"])
        groups.setdefault(ident, {}).setdefault(r["trial_id"], []).append(r["value"])
    out = []
    for ident, per_trial in groups.items():
        sample = next(r for r in rows if (r["stats_mode"], r["batch_size"] if r["stats_mode"] == "batch" else None,
                                          r["reestimate_batches"]) == ident)
        draws = max(len(v) for v in per_trial.values())
        label, key = _label(sample, draws)
        seeds = [statistics.mean(v) for _, v in sorted(per_trial.items())]
        spread = None
        if ident[0] == "reestimate":
            spreads = [max(v) - min(v) for v in per_trial.values()]
            spread = (statistics.mean(spreads), max(spreads))
        out.append(ModeResult(label, key, summarize(seeds), tuple(seeds), spread))
    return sorted(out, key=lambda m: m.key)


def ranking_sentence(arm: str, baseline: str, base_mean: float, results: Sequence[ModeResult],
                     higher_is_better: bool) -> str:
    """One plain sentence: does `arm` rank above or below `baseline` under every mode, or does it change?"""
    if not math.isfinite(base_mean):
        return f"`{arm}`: no finished `{baseline}` trials to rank against."
    sides = {}
    for m in results:
        if not math.isfinite(m.per_seed.mean):
            continue
        diff = m.per_seed.mean - base_mean
        sides[m.label] = "level with" if diff == 0 else ("above" if (diff > 0) == higher_is_better else "below")
    if not sides:
        return f"`{arm}`: no finished trial measured the inference modes."
    kinds = set(sides.values())
    if len(kinds) == 1:
        return f"`{arm}` ranks {kinds.pop()} `{baseline}` under every mode: the statistics choice does not change " \
               f"the ranking (means over seeds)."
    parts = "; ".join(f"{side} under {', '.join(k for k, v in sides.items() if v == side)}"
                      for side in ("above", "level with", "below") if side in kinds)
    return f"The ranking of `{arm}` against `{baseline}` changes with the mode: {parts} (means over seeds)."
