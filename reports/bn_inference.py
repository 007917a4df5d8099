"""Figure and markdown of the `bn_inference` diagnostic (runners/bn_inference.py): batch vs population
statistics per time step, and the metric against the number of re-estimation batches (issue 13).

Tables in, markdown lines and PNGs out; no torch. Every number is read from one row of the table.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pyarrow as pa
from matplotlib.figure import Figure

from reports.plots import _save

TABLE = "bn_inference"
REFERENCES = ("reestimate", "running")


def _rows(table: pa.Table, trial: str, kind: str) -> list[dict]:
    return [r for r in table.to_pylist() if r["trial_id"] == trial and r["kind"] == kind]


def trials(table: pa.Table) -> list[str]:
    """Trial ids in the table, sorted."""
    return sorted(set(table["trial_id"].to_pylist()))


def divergence_points(rows: list[dict]) -> list[int]:
    """Time steps shown in the markdown table: first, quarters, last."""
    last = max(r["t"] for r in rows)
    return sorted({0, last // 4, last // 2, (3 * last) // 4, last})


def batches_summary(rows: list[dict]) -> list[tuple[int, float, float, float, float, int]]:
    """(batches, mean, std, min, max, draws) of the re-estimated metric per count of batches."""
    out = []
    for n in sorted({r["batches"] for r in rows if r["reference"] == "reestimate"}):
        values = [r["value"] for r in rows if r["reference"] == "reestimate" and r["batches"] == n]
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        out.append((n, statistics.mean(values), std, min(values), max(values), len(values)))
    return out


def markdown(table: pa.Table, trial: str, num) -> list[str]:
    """Markdown lines for one trial; `num` formats a metric value (the report's Fmt.num)."""
    div = _rows(table, trial, "divergence")
    bat = _rows(table, trial, "batches")
    first = (div or bat)[0]
    lines = [f"Trial `{trial}` ({first['variant']} on {first['task']}), {first['checkpoint']} model at step "
             f"{first['step']}, `{first['split']}` split, evaluation batch {first['batch_size']}.", ""]
    if div:
        points = divergence_points(div)
        cell = {(r["reference"], r["t"]): r for r in div}
        lines += ["Relative distance ||h_t(batch statistics) − h_t(population statistics)|| / ||h_t(batch "
                  "statistics)|| of the top layer's output, mean [q25–q75] over one evaluation batch:", "",
                  "| population statistics | " + " | ".join(f"t={t}" for t in points) + " |",
                  "|" + "|".join(" --- " for _ in range(len(points) + 1)) + "|"]
        for ref in REFERENCES:
            if (ref, points[0]) in cell:
                lines.append(f"| {ref} | " + " | ".join(
                    f"{cell[(ref, t)]['value']:.3f} [{cell[(ref, t)]['q25']:.3f}–{cell[(ref, t)]['q75']:.3f}]"
                    for t in points) + " |")
        lines.append("")
    if bat:
        refs = {r["reference"]: r["value"] for r in bat if r["reference"] in ("batch", "running")}
        lines += [f"{bat[0]['metric']} after re-estimating population statistics from n training batches (mean ± "
                  f"std [min–max] over independent draws); batch statistics give {num(refs.get('batch'))}, the "
                  f"running averages {num(refs.get('running'))}:", "",
                  "| n batches | mean ± std | min–max | draws |", "| --- | --- | --- | --- |"]
        for n, mean, std, low, high, draws in batches_summary(bat):
            lines.append(f"| {n} | {num(mean)} ± {num(std)} | {num(low)}–{num(high)} | {draws} |")
        lines.append("")
    return lines


def figure(table: pa.Table, trial: str, path: Path, scale: float, label: str) -> Path:
    """Two panels: divergence against t; metric against re-estimation batches (draws as points)."""
    div = _rows(table, trial, "divergence")
    bat = _rows(table, trial, "batches")
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    for ref, color in zip(REFERENCES, ("C0", "C1")):
        rows = sorted((r for r in div if r["reference"] == ref), key=lambda r: r["t"])
        if rows:
            t = [r["t"] for r in rows]
            left.plot(t, [r["value"] for r in rows], color=color, label=ref)
            left.fill_between(t, [r["q25"] for r in rows], [r["q75"] for r in rows], color=color, alpha=0.2)
    left.set_xlabel("time step t")
    left.set_ylabel("relative distance to batch statistics")
    left.set_title("hidden states: batch vs population statistics")
    left.legend()
    summary = batches_summary(bat)
    if summary:
        xs = [s[0] for s in summary]
        right.plot(xs, [s[1] * scale for s in summary], color="C0", marker="o", label="re-estimated (mean)")
        points = [r for r in bat if r["reference"] == "reestimate"]
        right.scatter([r["batches"] for r in points], [r["value"] * scale for r in points], color="C0", s=10,
                      alpha=0.5, label="draws")
        for ref, color in (("batch", "C2"), ("running", "C1")):
            values = [r["value"] for r in bat if r["reference"] == ref]
            if values:
                right.axhline(values[0] * scale, color=color, linestyle="--", label=ref)
        right.set_xscale("log")
        right.set_xticks(xs, [str(x) for x in xs])
        right.minorticks_off()
    right.set_xlabel("re-estimation batches")
    right.set_ylabel(label)
    right.set_title("metric vs re-estimation batches")
    right.legend(fontsize=8)
    return _save(fig, path)
