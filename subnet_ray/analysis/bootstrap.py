"""95% bootstrap intervals for shares and changes in shares, over test examples and seeds.

The paper reports changes of +1 to +8 points from 500 test examples per language; with the
few hundred examples a smaller run keeps (only those every compared model classifies
correctly), a 5-point change can be noise. Each mean share, and each mean change of one
variant against another, gets a percentile interval from resampling:

- test examples, with replacement, within each test language (the paired differences of a
  comparison are resampled together, so the interval is that of a paired comparison);
- and, where a figure averages several runs (random-mask seeds, training seeds), the runs
  as well, with replacement, before the examples of each drawn run (a two-level bootstrap).

Replicates are drawn from a fixed seed, so a report regenerated from the same store has
the same intervals. A cell whose interval excludes 0 is called significant.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

N_BOOT = 2000
LEVEL = 0.95
SEED = 0


def bootstrap_means(runs: Sequence[np.ndarray], n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """Returns [n_boot, columns] bootstrap replicates of the mean over runs of each run's column means.

    `runs` holds one [examples, columns] array per run (a run with no examples is left out).
    One run: examples are resampled. Several: runs are resampled, then each drawn run's examples.
    """
    runs = [np.asarray(r, dtype=float) for r in runs if len(r)]
    if not runs:
        raise ValueError("bootstrap_means needs at least one run with examples")
    g = np.random.default_rng(seed)
    means = np.stack([_resampled_means(r, n_boot, g) for r in runs])
    if len(runs) == 1:
        return means[0]
    drawn = g.integers(0, len(runs), size=(n_boot, len(runs)))
    return means[drawn, np.arange(n_boot)[:, None]].mean(axis=1)


def _resampled_means(x: np.ndarray, n_boot: int, g: np.random.Generator) -> np.ndarray:
    """Returns [n_boot, columns]: the column means of `x` [n, columns] over n rows drawn with replacement, per replicate."""
    n = len(x)
    # How often each row is drawn (one bincount over all replicates), times x: no [n_boot, n, columns]
    # array in memory, and 2.4x faster than numpy's multinomial at n = 500.
    draws = g.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)
    return counts @ x / n


def mean_interval(runs: Sequence[np.ndarray], level: float = LEVEL,
                  groups: Sequence[object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (low, high) per column: the t interval of the mean over runs of each run's column means.

    `runs` holds one [examples, columns] array per run (a run with no examples is left out).
    One run: mean +- t(n-1) * sd / sqrt(n) over its n examples. Several: the same over the run
    means, with runs - 1 degrees of freedom, so the spread between runs, not the examples within
    them, sets the width. `groups` (one label per run, e.g. the training seed of each random-mask
    seed) averages the runs of a group first: the groups are then the independent units.
    Deterministic; NaN where undefined (one run of one example).
    """
    if groups is not None and len(groups) != len(runs):
        raise ValueError(f"mean_interval: {len(groups)} group labels for {len(runs)} runs")
    keep = [i for i, r in enumerate(runs) if len(r)]
    if not keep:
        raise ValueError("mean_interval needs at least one run with examples")
    arrays = [np.asarray(runs[i], dtype=float) for i in keep]
    if len(arrays) == 1:
        units = arrays[0]
    else:
        means = [a.mean(axis=0) for a in arrays]
        labels = [groups[i] for i in keep] if groups is not None else keep
        if len(set(labels)) > 1:
            means = [np.mean([m for m, l in zip(means, labels) if l == g], axis=0) for g in dict.fromkeys(labels)]
        units = np.stack(means)
    n = len(units)
    centre = units.mean(axis=0)
    if n < 2:
        return np.full_like(centre, np.nan), np.full_like(centre, np.nan)
    half = _t_quantile(level, n - 1) * units.std(axis=0, ddof=1) / np.sqrt(n)
    return centre - half, centre + half


@functools.lru_cache(maxsize=64)
def _t_quantile(level: float, df: int) -> float:
    """Returns the (1 + level) / 2 quantile of Student's t with df degrees of freedom."""
    return float(stats.t.ppf((1 + level) / 2, df))


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Returns (low, high) per column: the (1 - level) / 2 and (1 + level) / 2 percentiles of the replicates."""
    tail = 100 * (1 - level) / 2
    return np.percentile(replicates, tail, axis=0), np.percentile(replicates, 100 - tail, axis=0)


def interval_table(per_run: Sequence[pd.DataFrame], rows: Sequence[str], groups: Sequence[object] | None = None,
                   level: float = LEVEL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (low, high) tables [rows, columns] of `mean_interval`, test language by test language.

    Each frame of `per_run` holds one run's per-example values: index (test_language, test_id),
    one column per training language (as `shares.per_example_shares`); `groups` labels the runs
    as in `mean_interval`. A test language no run has examples of gets NaN.
    """
    columns = list(per_run[0].columns)
    lo = pd.DataFrame(np.nan, index=pd.Index(list(rows), name="test_language"), columns=columns)
    hi = lo.copy()
    for lang in rows:
        has = [lang in f.index.get_level_values("test_language") for f in per_run]
        runs = [f.xs(lang, level="test_language")[columns].to_numpy(float) for f, h in zip(per_run, has) if h]
        if any(len(r) for r in runs):
            labels = None if groups is None else [g for g, h in zip(groups, has) if h]
            lo.loc[lang], hi.loc[lang] = mean_interval(runs, level, labels)
    lo.columns.name = hi.columns.name = "train_language"
    return lo, hi


def excludes_zero(lo: pd.DataFrame, hi: pd.DataFrame) -> pd.DataFrame:
    """Returns, cell by cell, whether the interval [lo, hi] excludes 0 (False where undefined)."""
    return ((lo > 0) | (hi < 0)) & lo.notna() & hi.notna()
