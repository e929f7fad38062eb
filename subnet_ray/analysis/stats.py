"""Correlations with p-values and 95% intervals: Pearson and Spearman, as the paper reports them.

Intervals are Fisher-z intervals, tanh(atanh(r) +- 1.96 se): se = 1 / sqrt(n - 3) for Pearson,
sqrt(1.06 / (n - 3)) for Spearman (Fieller, Hartley and Pearson 1957). They need n >= 4.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of two samples, two-sided p-values, and n."""

    pearson_r: float
    pearson_p: float
    spearman_r: float
    spearman_p: float
    n: int
    pearson_ci: tuple[float, float] = (math.nan, math.nan)
    spearman_ci: tuple[float, float] = (math.nan, math.nan)

    def as_dict(self) -> dict:
        """Returns the fields as a JSON-ready dict (NaN becomes None)."""
        def clean(v):
            if isinstance(v, tuple):
                return [clean(x) for x in v]
            return None if isinstance(v, float) and math.isnan(v) else v

        return {k: clean(v) for k, v in asdict(self).items()}


def fisher_interval(r: float, n: int, variance: float = 1.0, level: float = 0.95) -> tuple[float, float]:
    """Returns the Fisher-z interval of a correlation r from n pairs (se = sqrt(variance / (n - 3))); NaN if n < 4."""
    if n < 4 or not math.isfinite(r):
        return (math.nan, math.nan)
    z = math.atanh(min(max(r, -1 + 1e-12), 1 - 1e-12))
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(variance / (n - 3))
    return (math.tanh(z - half), math.tanh(z + half))


def correlate(x, y) -> Correlation:
    """Returns Pearson and Spearman r with p-values over the pairs where both x and y are finite.

    With fewer than 3 pairs, or a constant sample, the correlation is undefined and every
    r and p is NaN (n still says how many pairs there were).
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"correlate needs samples of equal length, got {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        nan = float("nan")
        return Correlation(nan, nan, nan, nan, n)
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    r, rho = float(pr.statistic), float(sr.statistic)
    return Correlation(r, float(pr.pvalue), rho, float(sr.pvalue), n, fisher_interval(r, n), fisher_interval(rho, n, 1.06))
