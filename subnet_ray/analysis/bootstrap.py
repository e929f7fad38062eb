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

from collections.abc import Sequence

import numpy as np
import pandas as pd

from subnet_ray.seeding import rng

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


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Returns (low, high) per column: the (1 - level) / 2 and (1 + level) / 2 percentiles of the replicates."""
    tail = 100 * (1 - level) / 2
    return np.percentile(replicates, tail, axis=0), np.percentile(replicates, 100 - tail, axis=0)


def interval_table(per_run: Sequence[pd.DataFrame], rows: Sequence[str], n_boot: int = N_BOOT,
                   seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (low, high) tables [rows, columns] of the interval of the mean, test language by test language.

    Each frame of `per_run` holds one run's per-example values: index (test_language, test_id),
    one column per training language (as `shares.per_example_shares`). A test language no run
    has examples of gets NaN.
    """
    columns = list(per_run[0].columns)
    lo = pd.DataFrame(np.nan, index=pd.Index(list(rows), name="test_language"), columns=columns)
    hi = lo.copy()
    for lang in rows:
        runs = [f.xs(lang, level="test_language")[columns].to_numpy(float) for f in per_run
                if lang in f.index.get_level_values("test_language")]
        if any(len(r) for r in runs):
            # one stream per test language, so adding a language leaves the others' intervals alone
            low, high = percentile_interval(bootstrap_means(runs, n_boot, int(rng(seed, "bootstrap", lang).integers(2**32))))
            lo.loc[lang], hi.loc[lang] = low, high
    lo.columns.name = hi.columns.name = "train_language"
    return lo, hi


def excludes_zero(lo: pd.DataFrame, hi: pd.DataFrame) -> pd.DataFrame:
    """Returns, cell by cell, whether the interval [lo, hi] excludes 0 (False where undefined)."""
    return ((lo > 0) | (hi < 0)) & lo.notna() & hi.notna()
