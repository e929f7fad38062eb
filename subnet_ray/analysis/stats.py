"""Correlations with p-values: Pearson and Spearman, as the paper reports them."""
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

    def as_dict(self) -> dict:
        """Returns the fields as a JSON-ready dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


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
    return Correlation(float(pr.statistic), float(pr.pvalue), float(sr.statistic), float(sr.pvalue), n)
