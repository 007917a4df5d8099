"""What tuning did, in a tuned study's report: best configurations, ASHA stops, budget curves, sensitivity.

Expected best validation metric after n trials (Dodge et al. 2019, "Show Your Work",
Section 3): with the N search results of a variant sorted, v_(1) <= ... <= v_(N), and n
draws with replacement, P(max = v_(i)) = (i/N)^n - ((i-1)/N)^n, so
E[max_n] = sum_i v_(i) P(max = v_(i)) and Var[max_n] = sum_i v_(i)^2 P(max = v_(i)) - E[max_n]^2.
For a metric where lower is better the same holds for the minimum (the values negated).
A trial ASHA stopped enters with the best validation value it reached (that is what the
search ranked it by). Trials without a usable value (diverged, failed, unfinished) are left
out of the pool, as the search's choice leaves them out, and the report says how many: with
them in as -inf the expected best would be -inf at every n (all n draws could hit them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports.load import VARIANT_ORDER, StudyTables, TrialSummary, ordered
from reports.plots import _colors, _save


def expected_best(values: Sequence[float], n: int, mode: str = "max") -> tuple[float, float]:
    """(mean, std) of the best of n draws with replacement from `values` (Dodge et al.'s estimator)."""
    if n < 1 or not values:
        raise ValueError(f"need n >= 1 and at least one value, got n={n} and {len(values)} values")
    sign = 1.0 if mode == "max" else -1.0
    v = np.sort(sign * np.asarray(values, dtype=float))
    size = len(v)
    i = np.arange(1, size + 1)
    p = (i / size) ** n - ((i - 1) / size) ** n
    if not np.isfinite(v).all():  # -inf entries (failed trials): the mean is -inf while they can be drawn
        finite = np.isfinite(v)
        if p[~finite].sum() > 0:
            return sign * -math.inf, math.nan
        v, p = v[finite], p[finite]
    mean = float((v * p).sum())
    var = max(float((v * v * p).sum()) - mean * mean, 0.0)
    return sign * mean, math.sqrt(var)


def searched_keys(trials: Sequence[TrialSummary]) -> dict[str, bool]:
    """The searched keys of some trials -> whether their space was log-scaled (from the study record)."""
    keys: dict[str, bool] = {}
    for t in trials:
        for key in _point(t):
            keys.setdefault(key, False)
    return dict(sorted(keys.items()))


def _point(t: TrialSummary) -> dict:
    try:
        config = json.loads(t.row["config_json"] or "{}")
    except json.JSONDecodeError:
        return {}
    grid = config.get("grid") if isinstance(config, dict) else None
    return grid if isinstance(grid, dict) else {}


def _value(t: TrialSummary, mode: str) -> float:
    v = t.row.get("best_valid")
    if t.status in ("finished", "stopped") and v is not None and math.isfinite(v):
        return float(v)
    return -math.inf if mode == "max" else math.inf


def budget_figure(task: str, curves: dict[str, list[tuple[float, float]]], ylabel: str,
                  scale: Callable[[float], float], path: Path) -> Path:
    """Expected best validation metric (+-1 std) against the number of search trials, one line per variant."""
    fig = Figure(figsize=(7, 4.5))
    axis = fig.add_subplot(1, 1, 1)
    for color, (variant, points) in zip(_colors(len(curves)), curves.items()):
        n = np.arange(1, len(points) + 1)
        mean = np.array([scale(m) for m, _ in points])
        std = np.nan_to_num(np.array([abs(scale(m + s) - scale(m)) for m, s in points]))
        axis.plot(n, mean, color=color, marker="o", markersize=3, label=variant)
        axis.fill_between(n, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("search trials n (budget)")
    axis.set_ylabel(f"expected best validation {ylabel}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    fig.suptitle(f"{task}: expected best validation {ylabel} vs budget (Dodge et al. 2019), ±1 std")
    return _save(fig, path)


def sensitivity_figure(task: str, trials: Sequence[TrialSummary], keys: dict[str, bool], ylabel: str,
                       scale: Callable[[float], float], path: Path) -> Path:
    """Best validation metric of each search trial against each searched key (one panel per key); filled
    markers for finished trials, hollow for those ASHA stopped; log axis for log-scaled spaces."""
    fig = Figure(figsize=(5.5 * len(keys), 4.2))
    variants = ordered((t.variant for t in trials), VARIANT_ORDER)
    colors = dict(zip(variants, _colors(len(variants))))
    for k, (key, log) in enumerate(keys.items()):
        axis = fig.add_subplot(1, len(keys), k + 1)
        for variant in variants:
            for stopped in (False, True):
                pts = [(float(_point(t)[key]), scale(t.row["best_valid"])) for t in trials
                       if t.variant == variant and key in _point(t) and (t.status == "stopped") == stopped
                       and t.row.get("best_valid") is not None and math.isfinite(t.row["best_valid"])
                       and isinstance(_point(t)[key], int | float)]
                if pts:
                    x, y = zip(*sorted(pts))
                    axis.scatter(x, y, s=24, label=f"{variant}{' (stopped)' if stopped else ''}",
                                 facecolors="none" if stopped else colors[variant], edgecolors=colors[variant])
        if log:
            axis.set_xscale("log")
        axis.set_xlabel(key)
        axis.set_ylabel(f"best validation {ylabel}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    fig.suptitle(f"{task}: sensitivity of each variant to the searched settings (search trials)")
    return _save(fig, path)


def log_keys(study_dir: Path) -> set[str]:
    """Searched keys with a log-scaled space, from the study record the runner writes (`study.json`)."""
    try:
        record = json.loads((study_dir / "study.json").read_text())
    except (OSError, json.JSONDecodeError):
        return set()
    search = (record.get("study") or {}).get("search") or {}
    tables = [search.get("space") or {}] + list((search.get("variants") or {}).values())
    return {key for table in tables for key, space in table.items() if isinstance(space, dict) and "loguniform" in space}


def _budgets(samples: int) -> list[int]:
    """The budgets tabulated: every n up to 8, else powers of two and the full budget."""
    if samples <= 8:
        return list(range(1, samples + 1))
    return sorted({2 ** k for k in range(int(math.log2(samples)) + 1)} | {samples})


def _ranking(means: dict[str, float], mode: str) -> list[str]:
    return sorted(means, key=lambda v: (-means[v] if mode == "max" else means[v], v))


def section(report, task: str, source: str = "") -> None:
    """Append the tuning section of one task to a reports.render.Report (its lines, figures and helpers);
    in a merged report, of the search that study `source` ran (searches of two studies are not one)."""
    from reports.render import _table, metric_format

    s: StudyTables = report.study
    trials = [t for t in s.search.values() if t.task == task and t.source == source]
    of = f" (study `{source}`)" if source else ""
    name = f"{source}-{task}" if source else task  # figure names
    metric, mode = next(((t.row["metric"], t.row["mode"]) for t in sorted(trials, key=lambda t: t.trial_id)
                         if t.row["metric"] and t.row["mode"] in ("max", "min")), ("value", "max"))
    fmt = metric_format(metric, mode)
    variants = ordered((t.variant for t in trials), VARIANT_ORDER)
    by_variant = {v: sorted((t for t in trials if t.variant == v), key=lambda t: t.trial_id) for v in variants}
    samples = {v: len(ts) for v, ts in by_variant.items()}
    direction = "higher is better" if fmt.higher_is_better else "lower is better"
    steps = sorted({json.loads(t.row["config_json"] or "{}").get("train", {}).get("steps") for t in trials} - {None})
    report.lines += [f"## Tuning on task `{task}`{of}: {metric} ({direction})", "",
                     f"Search phase: {', '.join(f'`{v}` {n}' for v, n in samples.items())} trials per variant, "
                     f"at most {', '.join(map(str, steps)) or '?'} steps each, ranked by their best validation "
                     f"{metric} (test scores are never used to choose). The comparison in the task's section below "
                     f"re-runs each variant's best configuration on the study's seeds.", ""]
    rows = []
    for v, ts in by_variant.items():
        ok = [t for t in ts if math.isfinite(_value(t, mode))]
        best = min(ok, key=lambda t: (-_value(t, mode) if mode == "max" else _value(t, mode), t.trial_id)) if ok else None
        config = ", ".join(f"{k}={_num(x)}" for k, x in sorted(_point(best).items())) if best else "none"
        rows.append([f"`{v}`", config, fmt.num(best.row["best_valid"]) if best else "-",
                     f"`{best.trial_id}`" if best else "-", str(len(ts)),
                     str(sum(t.status == "stopped" for t in ts)),
                     str(sum(t.status not in ("finished", "stopped") for t in ts))])
    report.lines += ["### Best configuration per variant", ""]
    report.lines += _table(["variant", "best configuration", f"best valid {fmt.label}", "trial", "search trials",
                            "stopped by ASHA", "diverged/failed/unfinished"], rows)
    report.lines.append("")
    pools = {v: [_value(t, mode) for t in ts if math.isfinite(_value(t, mode))] for v, ts in by_variant.items()}
    curves = {v: [expected_best(pool, n, mode) for n in range(1, len(pool) + 1)] for v, pool in pools.items() if pool}
    left_out = {v: len(by_variant[v]) - len(pool) for v, pool in pools.items() if len(by_variant[v]) > len(pool)}
    budgets = _budgets(max((len(p) for p in curves.values()), default=0))
    report.lines += ["### Expected best validation vs budget", "",
                     f"Expected best validation {fmt.label} ± std after n search trials (Dodge et al. 2019: the best "
                     f"of n draws with replacement from a variant's search results; stopped trials count with the "
                     f"best value they reached; trials without a usable value are left out"
                     + (": " + ", ".join(f"`{v}` {k}" for v, k in left_out.items()) if left_out else ", none here")
                     + ").", ""]
    report.lines += _table(["variant"] + [f"n={n}" for n in budgets],
                           [[f"`{v}`"] + [_pm(fmt, *points[n - 1]) if n <= len(points) else "-" for n in budgets]
                            for v, points in curves.items()])
    report.lines.append("")
    if len(curves) > 1:
        first = _ranking({v: p[0][0] for v, p in curves.items()}, mode)
        full = min(len(p) for p in curves.values())
        last = _ranking({v: p[full - 1][0] for v, p in curves.items()}, mode)
        verdict = ("the same at both budgets" if first == last else "different: the ranking depends on the budget")
        report.lines += [f"Ranking by expected best validation, best first, at n=1: {', '.join(f'`{v}`' for v in first)}; "
                         f"at n={full}: {', '.join(f'`{v}`' for v in last)} ({verdict}).", ""]
    scale = lambda x: x * fmt.scale  # noqa: E731 - the figure's display scale (percent for accuracy)
    report.link(budget_figure(task, curves, fmt.label, scale, report.figure(f"{name}-budget")),
                f"{task}{of}: expected best validation vs budget")
    logs = log_keys(dict(s.parts).get(source, s.path))
    keys = {k: k in logs for k in searched_keys(trials)}
    if keys:
        report.lines += ["### Sensitivity", "",
                         "Best validation of every search trial against each searched setting (hollow markers: "
                         "stopped by ASHA; log axis for log-uniform spaces).", ""]
        report.link(sensitivity_figure(task, trials, keys, fmt.label, scale, report.figure(f"{name}-sensitivity")),
                    f"{task}{of}: sensitivity to the searched settings")


def _num(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _pm(fmt, mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{fmt.num(mean)} ± {fmt.num(std) if math.isfinite(std) else '-'}"
