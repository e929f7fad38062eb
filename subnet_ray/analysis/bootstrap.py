"""95% intervals for shares and changes in shares: `mean_interval`, over test examples and runs.

The paper reports changes of +1 to +8 points from 500 test examples per language; with the
few hundred examples a smaller run keeps (only those every compared model classifies
correctly), a 5-point change can be noise. Each mean share, and each mean change of one
variant against another (paired: an example's two shares are differenced first), gets a t
interval (`mean_interval`):

- one run: over its test examples, mean +- t(n-1) sd / sqrt(n);
- several runs averaged (random-mask seeds, training seeds; a training seed's random-mask
  seeds grouped into one unit): over the runs' means with runs - 1 degrees of freedom, plus
  the variance of the test examples the runs share (they are the same items, often against
  the same full model, so an example's own effect moves every run alike and is invisible in
  the spread between runs): t with Satterthwaite's df on the sum, never narrower than the
  runs' own t interval.

Chosen by measurement (benchmarks/interval_coverage.py; numbers in the notes): the two-level
percentile bootstrap used before (`bootstrap_means`, kept for that comparison) covered 0.72-0.89
with 2-3 runs whose means differ by 3-5 points, 0.98-1.0 when they did not, and 0.71-0.86 with
5-10 runs on shared test examples. The t interval on run means alone covers 0.94-0.96 when each
run has its own examples but as little as 0.39 when they share them; Satterthwaite's df on the
sum alone fell to 0.88 with 2 runs; a t per part (root sum of squares) over-covered up to 0.99.
This one covers 0.935-0.962 in every case measured but 2 runs on shared examples that do not
differ (0.98). BCa and the studentized bootstrap did no better than t for one run (0.89, 0.93
at 20 examples). No random draws: a report regenerated from
the same store has the same intervals. A cell whose interval excludes 0 is called significant.
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


def mean_interval(runs: Sequence[np.ndarray], level: float = LEVEL, groups: Sequence[object] | None = None,
                  ids: Sequence[Sequence[object]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (low, high) per column: the t interval of the mean over runs of each run's column means.

    `runs` holds one [examples, columns] array per run (a run with no examples is left out).
    One run: mean +- t(n-1) sd / sqrt(n) over its n examples. Several: the runs are the units
    (or groups of runs, `groups` holding one label per run: e.g. the training seed of each
    random-mask seed, whose runs share that seed's model, are averaged first): mean +-
    t(units-1) sd_units / sqrt(units), so the spread between runs, not the examples within
    them, sets the width. `ids` (one sequence of test example ids per run): where the units
    share test examples, an example's own effect is common to every unit and does not show in
    the spread between them; its variance (from the units x shared examples table) is added:
    half = max(t(Satterthwaite df) sqrt(var_units + var_examples), t(units-1) sqrt(var_units)).
    Deterministic; NaN where undefined (one run of one example).
    """
    for name, labels in (("group labels", groups), ("id lists", ids)):
        if labels is not None and len(labels) != len(runs):
            raise ValueError(f"mean_interval: {len(labels)} {name} for {len(runs)} runs")
    keep = [i for i, r in enumerate(runs) if len(r)]
    if not keep:
        raise ValueError("mean_interval needs at least one run with examples")
    arrays = [np.asarray(runs[i], dtype=float).reshape(len(runs[i]), -1) for i in keep]
    if len(arrays) == 1:
        x = arrays[0]
        if len(x) < 2:
            return np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan)
        return _t_interval(x.mean(axis=0), [(x.var(axis=0, ddof=1) / len(x), len(x) - 1)], level)
    labels = [groups[i] for i in keep] if groups is not None and len({groups[i] for i in keep}) > 1 else keep
    members = [[j for j, l in enumerate(labels) if l == u] for u in dict.fromkeys(labels)]
    means = np.stack([np.mean([arrays[j].mean(axis=0) for j in m], axis=0) for m in members])
    parts = [(means.var(axis=0, ddof=1) / len(members), len(members) - 1)]
    if ids is not None:
        parts += _shared_examples([list(ids[i]) for i in keep], arrays, members)
    return _t_interval(means.mean(axis=0), parts, level)


def _shared_examples(ids: list[list], arrays: list[np.ndarray], members: list[list[int]]) -> list[tuple[np.ndarray, int]]:
    """Returns [(variance, df)] of the shared test examples' own effect on the mean ([] if fewer than 2 are shared).

    With y[u, x] = mu + a_u + b_x + e_ux on the units x shared examples table, the spread of
    the unit means carries var(a)/k + var(e)/(nk) but not var(b) sum_x w_x^2, w_x being
    example x's weight in the mean: var(b) = (MS_examples - MS_residual) / k (ANOVA), n - 1 df.
    """
    k = len(members)
    index = [pd.Index(i) for i in ids]
    same = all(len(i) == len(index[0]) and i.equals(index[0]) for i in index[1:])  # the usual case: one test set
    shared = index[0]
    for i in [] if same else index[1:]:
        shared = shared.intersection(i)
    n = len(shared)
    if n < 2:
        return []
    rows = [np.arange(n)] * len(ids) if same else [i.get_indexer(shared) for i in index]
    table = np.stack([np.mean([arrays[j][rows[j]] for j in m], axis=0) for m in members])  # [units, shared, columns]
    ex_means = table.mean(axis=0)
    resid = table - table.mean(axis=1, keepdims=True) - ex_means + ex_means.mean(axis=0)
    ms_x = k * ex_means.var(axis=0, ddof=1)
    ms_e = (resid ** 2).sum(axis=(0, 1)) / ((k - 1) * (n - 1))
    if same:  # every example weighs 1/n
        weight = np.full(n, 1.0 / n)
    else:
        every = index[0].append(index[1:]).unique()
        weight = np.zeros(len(every))
        for m in members:
            for j in m:
                weight[every.get_indexer(index[j])] += 1.0 / (len(index[j]) * len(m) * k)
    return [(float((weight ** 2).sum()) * np.maximum(ms_x - ms_e, 0.0) / k, n - 1)]


def _t_interval(centre: np.ndarray, parts: list[tuple[np.ndarray, int]], level: float) -> tuple[np.ndarray, np.ndarray]:
    """Returns centre -+ the half-width of a t interval on the summed variance of `parts` [(variance, df)], per column.

    One part: t(df) sqrt(variance). Two (units, shared examples): t with Satterthwaite's df on
    the sum, but never narrower than the units' own t interval: Satterthwaite's df follows the
    estimated share of each part, and a between-unit variance from 1-2 df is often far too small
    (measured: coverage 0.88 with 2 runs without this floor).
    """
    (var, df), *rest = [(np.maximum(v, 0.0), d) for v, d in parts]
    half = _t_quantile(level, df) * np.sqrt(var)
    if rest:
        total = var + sum(v for v, _ in rest)
        spread = var ** 2 / df + sum(v ** 2 / d for v, d in rest)
        sat = np.where(spread > 0, total ** 2 / np.where(spread > 0, spread, 1.0), df)
        half = np.maximum(half, stats.t.ppf((1 + level) / 2, sat) * np.sqrt(total))
    return centre - half, centre + half


@functools.lru_cache(maxsize=256)
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
    as in `mean_interval`, and the test ids tell it which examples the runs share. A test
    language no run has examples of gets NaN.
    """
    columns = list(per_run[0].columns)
    lo = pd.DataFrame(np.nan, index=pd.Index(list(rows), name="test_language"), columns=columns)
    hi = lo.copy()
    for lang in rows:
        has = [lang in f.index.get_level_values("test_language") for f in per_run]
        frames = [f.xs(lang, level="test_language")[columns] for f, h in zip(per_run, has) if h]
        if any(len(f) for f in frames):
            labels = None if groups is None else [g for g, h in zip(groups, has) if h]
            lo.loc[lang], hi.loc[lang] = mean_interval([f.to_numpy(float) for f in frames], level, labels,
                                                       ids=[f.index.to_numpy() for f in frames])
    lo.columns.name = hi.columns.name = "train_language"
    return lo, hi


def excludes_zero(lo: pd.DataFrame, hi: pd.DataFrame) -> pd.DataFrame:
    """Returns, cell by cell, whether the interval [lo, hi] excludes 0 (False where undefined)."""
    return ((lo > 0) | (hi < 0)) & lo.notna() & hi.notna()
