"""Small statistics for reports: mean and sample std over seeds, Student t quantiles, Welch intervals.

No scipy: the t quantile is computed by inverting the t CDF, which is written with the
regularized incomplete beta function (continued fraction, modified Lentz method), by
bisection to 1e-12. That handles the non-integer degrees of freedom of Welch's interval,
which a printed table of critical values cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; NaN when n < 2) and count of finite values."""

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Mean and sample std of the finite values (NaN and inf are dropped, not averaged)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Summary(math.nan, math.nan, 0)
    std = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
    return Summary(float(np.mean(x)), std, len(x))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with `df` (possibly non-integer) degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t (inverse CDF), by bisection on t_cdf to 1e-12."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_ppf needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Difference:
    """Difference of means a - b with a Welch t confidence interval (NaN bounds when undefined)."""

    diff: float
    low: float
    high: float
    df: float


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    """Welch's t interval for mean(a) - mean(b), seeds as independent samples; needs n >= 2 in both."""
    return contrast_interval([a, b], [1.0, -1.0], level)


def contrast_interval(groups: Sequence[Sequence[float]], weights: Sequence[float],
                      level: float = 0.95) -> Difference:
    """t interval for sum_i w_i mean(group_i) with Welch-Satterthwaite degrees of freedom.

    se^2 = sum_i w_i^2 s_i^2 / n_i and df = se^4 / sum_i (w_i^2 s_i^2 / n_i)^2 / (n_i - 1); with two
    groups and weights (1, -1) this is exactly Welch's interval for a difference of means. Groups
    are independent (seeds as samples); every group needs n >= 2, else the bounds are NaN.
    """
    summaries = [summarize(g) for g in groups]
    diff = sum(w * s.mean for w, s in zip(weights, summaries, strict=True))
    if any(s.n < 2 for s in summaries):
        return Difference(diff, math.nan, math.nan, math.nan)
    parts = [w * w * s.std**2 / s.n for w, s in zip(weights, summaries)]
    se = math.sqrt(sum(parts))
    if se == 0.0:  # identical values in every group: the interval collapses to the point
        return Difference(diff, diff, diff, math.inf)
    df = se**4 / sum(v**2 / (s.n - 1) for v, s in zip(parts, summaries))
    half = t_ppf(0.5 + level / 2.0, df) * se
    return Difference(diff, diff - half, diff + half, df)
