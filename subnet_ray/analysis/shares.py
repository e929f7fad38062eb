"""Language shares among each test example's most influential training examples.

For one test example, the share (%) of training language L among its top-k most positive
(or most negative) training examples is the fraction of those k examples that are in L; the
score-weighted share weights each example by |influence score| instead of 1. A test
language's shares are the mean over its test examples. Language specialisation is the
in-language share (the diagonal). Comparisons between two variants use only the test
examples both classify correctly (paper Section 4.3) and report share(a) - share(b) in
percentage points. Every mean share and change has a 95% t interval: over test examples for
one run, over the run means where several runs are averaged (see bootstrap.mean_interval).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from subnet_ray.analysis.bootstrap import interval_table
from subnet_ray.analysis.results import SUM_CHECKPOINT, InfluenceResult

KEY = ["test_language", "test_id"]


def example_keys(df: pd.DataFrame) -> pd.MultiIndex:
    """Returns the (test_language, test_id) key of every row of a topk or predictions table."""
    return pd.MultiIndex.from_frame(df[KEY])


def correct_examples(predictions: pd.DataFrame) -> pd.MultiIndex:
    """Returns the keys of the test examples whose prediction equals the label."""
    return example_keys(predictions[predictions["pred"] == predictions["label"]])


def ranked_examples(result: InfluenceResult) -> pd.MultiIndex:
    """Returns the keys of the test examples the result has rankings for."""
    return result.cached(("ranked",), lambda: pd.MultiIndex.from_frame(result.topk[KEY].drop_duplicates()))


def correct_under_all(results: Iterable[InfluenceResult]) -> pd.MultiIndex:
    """Returns the keys of test examples every result ranks and classifies correctly."""
    keep: pd.MultiIndex | None = None
    for result in results:
        ok = correct_examples(result.predictions).intersection(ranked_examples(result))
        keep = ok if keep is None else keep.intersection(ok)
    if keep is None:
        raise ValueError("correct_under_all needs at least one InfluenceResult")
    return keep


def per_example_shares(
    topk: pd.DataFrame,
    languages: Sequence[str],
    *,
    sign: str = "pos",
    checkpoint: int = SUM_CHECKPOINT,
    keep: pd.MultiIndex | None = None,
    weighted: bool = False,
) -> pd.DataFrame:
    """Returns shares (%) per test example: index (test_language, test_id), one column per language.

    Each row sums to 100. `keep` restricts to those example keys; `weighted` weights each
    ranked training example by |score| instead of counting it once.
    """
    if sign not in ("pos", "neg"):
        raise ValueError(f"sign must be 'pos' or 'neg', got {sign!r}")
    sel = topk[(topk["sign"] == sign) & (topk["checkpoint"] == checkpoint)]
    if keep is not None:
        sel = sel[example_keys(sel).isin(keep)]
    unknown = set(sel["train_language"].unique()) - set(languages)
    if unknown:
        raise ValueError(f"topk has training languages {sorted(unknown)} not in {list(languages)}")
    weight = sel["score"].abs() if weighted else pd.Series(1.0, index=sel.index)
    table = (
        sel.assign(weight=weight.astype(float))
        .groupby(KEY + ["train_language"])["weight"]
        .sum()
        .unstack("train_language", fill_value=0.0)
        .reindex(columns=list(languages), fill_value=0.0)
    )
    table.columns.name = "train_language"
    total = table.sum(axis=1)
    if (total <= 0).any():
        bad = total[total <= 0].index[0]
        raise ValueError(f"test example {bad} has zero total |score| among its {sign} top-k; weighted shares undefined")
    return table.div(total, axis=0) * 100.0


def _per_example(source: pd.DataFrame | InfluenceResult, languages: Sequence[str], sign: str, checkpoint: int,
                 keep: pd.MultiIndex | None, weighted: bool) -> pd.DataFrame:
    """Returns per-example shares of a topk table, or of a result (cached there, then filtered to keep)."""
    if isinstance(source, pd.DataFrame):
        return per_example_shares(source, languages, sign=sign, checkpoint=checkpoint, keep=keep, weighted=weighted)
    per_ex = source.cached(
        ("shares", tuple(languages), sign, checkpoint, weighted),
        lambda: per_example_shares(source.topk, languages, sign=sign, checkpoint=checkpoint, weighted=weighted),
    )
    return per_ex if keep is None else per_ex[per_ex.index.isin(keep)]


def language_shares(
    source: pd.DataFrame | InfluenceResult,
    languages: Sequence[str],
    *,
    sign: str = "pos",
    checkpoint: int = SUM_CHECKPOINT,
    keep: pd.MultiIndex | None = None,
    weighted: bool = False,
) -> pd.DataFrame:
    """Returns mean shares (%): rows test languages (in `languages` order, those present), columns training languages.

    `source` is a topk table or an InfluenceResult (whose per-example shares are cached).
    """
    per_ex = _per_example(source, languages, sign, checkpoint, keep, weighted)
    shares = per_ex.groupby(level="test_language").mean()
    shares = shares.reindex([lang for lang in languages if lang in shares.index])
    shares.index.name = "test_language"
    return shares


def example_counts(
    source: pd.DataFrame | InfluenceResult,
    languages: Sequence[str],
    *,
    sign: str = "pos",
    checkpoint: int = SUM_CHECKPOINT,
    keep: pd.MultiIndex | None = None,
) -> pd.Series:
    """Returns the number of test examples behind each test language's shares."""
    per_ex = _per_example(source, languages, sign, checkpoint, keep, False)
    return per_ex.groupby(level="test_language").size()


def specialization(shares: pd.DataFrame) -> pd.Series:
    """Returns the in-language share (%) of each test language (the diagonal of a shares table)."""
    langs = [lang for lang in shares.index if lang in shares.columns]
    return pd.Series([shares.at[lang, lang] for lang in langs], index=pd.Index(langs, name="test_language"), dtype=float)


@dataclass
class ShareComparison:
    """Shares of two variants on the test examples both classify correctly, and their difference."""

    a: str
    b: str
    sign: str
    shares_a: pd.DataFrame
    shares_b: pd.DataFrame
    delta: pd.DataFrame  # shares_a - shares_b, percentage points
    n: pd.Series  # test examples per test language behind both
    per_example: pd.DataFrame  # share_a - share_b of each test example (index test_language, test_id): delta's mean


def compare_shares(
    results: Mapping[str, InfluenceResult],
    a: str,
    b: str,
    languages: Sequence[str],
    *,
    sign: str = "pos",
    checkpoint: int = SUM_CHECKPOINT,
    weighted: bool = False,
) -> ShareComparison:
    """Returns the shares of variants a and b and a - b, on test examples both classify correctly."""
    for name in (a, b):
        if name not in results:
            raise KeyError(f"variant {name!r} has no influence results; have {sorted(results)}")
    keep = correct_under_all([results[a], results[b]])
    kw = dict(sign=sign, checkpoint=checkpoint, keep=keep, weighted=weighted)
    sa = language_shares(results[a], languages, **kw)
    sb = language_shares(results[b], languages, **kw)
    rows = [lang for lang in sa.index if lang in sb.index]
    if not rows:
        raise ValueError(
            f"no test example has {sign!r} rankings at checkpoint {checkpoint} in both {a!r} and {b!r} "
            f"and is classified correctly by both"
        )
    sa, sb = sa.loc[rows], sb.loc[rows]
    n = example_counts(results[a], languages, sign=sign, checkpoint=checkpoint, keep=keep).reindex(rows)
    pa = _per_example(results[a], languages, sign, checkpoint, keep, weighted)
    pb = _per_example(results[b], languages, sign, checkpoint, keep, weighted)
    both = pa.index.intersection(pb.index)
    return ShareComparison(a, b, sign, sa, sb, sa - sb, n, pa.loc[both] - pb.loc[both])


def delta_interval(comparisons: Sequence[ShareComparison], groups: Sequence[object] | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (low, high) of the 95% interval of `mean_delta(comparisons)`, cell by cell (`bootstrap.mean_interval`).

    One comparison: a t interval over its paired per-example changes (an example's two shares
    move together). Several (e.g. random-mask seeds): over the comparisons' mean changes, or
    over the means of each group of them (`groups`, e.g. the training seed of each).
    """
    rows = mean_delta(comparisons).index
    return interval_table([c.per_example for c in comparisons], rows, groups)


def shares_with_interval(
    runs: Sequence[InfluenceResult], languages: Sequence[str], *, sign: str = "pos"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Returns (shares, low, high): `language_shares` of each run on the test examples it classifies
    correctly, averaged over the runs (e.g. training seeds), and the 95% interval of that mean,
    cell by cell (`bootstrap.mean_interval`: over test examples; over the run means when several).
    """
    keeps = [correct_under_all([r]) for r in runs]
    tables = [language_shares(r, languages, sign=sign, keep=k) for r, k in zip(runs, keeps)]
    mean = pd.concat(tables, keys=range(len(tables)), names=["_run"]).groupby(level="test_language").mean()
    mean = mean.reindex([lang for lang in languages if lang in mean.index])
    frames = [_per_example(r, languages, sign, SUM_CHECKPOINT, k, False) for r, k in zip(runs, keeps)]
    lo, hi = interval_table(frames, list(mean.index))
    return mean, lo, hi


def specialization_interval(runs: Sequence[tuple[InfluenceResult, pd.MultiIndex | None]], languages: Sequence[str],
                            checkpoint: int, groups: Sequence[object] | None = None) -> pd.DataFrame:
    """Returns test_language, low, high: the interval of the in-language positive share at `checkpoint`.

    `runs` are (result, examples to keep) averaged together; several: the interval is over
    their means (or their groups' means, `groups` as in `bootstrap.mean_interval`).
    """
    frames = [_per_example(r, languages, "pos", checkpoint, keep, False) for r, keep in runs]
    rows = [lang for lang in languages if any(lang in f.index.get_level_values("test_language") for f in frames)]
    lo, hi = interval_table(frames, rows, groups)
    return pd.DataFrame({"test_language": rows, "low": [lo.at[l, l] for l in rows], "high": [hi.at[l, l] for l in rows]})


def mean_delta(comparisons: Sequence[ShareComparison]) -> pd.DataFrame:
    """Returns the mean of several comparisons' deltas (e.g. over random seeds), cell by cell."""
    if not comparisons:
        raise ValueError("mean_delta needs at least one comparison")
    stacked = pd.concat([c.delta for c in comparisons], keys=range(len(comparisons)), names=["_run"])
    mean = stacked.groupby(level="test_language").mean()
    order = [lang for lang in comparisons[0].delta.columns if lang in mean.index]
    return mean.reindex(order)


def specialization_by_checkpoint(
    result: InfluenceResult, languages: Sequence[str], *, keep: pd.MultiIndex | None = None, weighted: bool = False
) -> pd.DataFrame:
    """Returns in-language positive share per test language and epoch checkpoint.

    Columns test_language, checkpoint, specialization; only checkpoints >= 1 (not the sum).
    """
    rows = []
    for ckpt in sorted(c for c in result.topk["checkpoint"].unique() if c != SUM_CHECKPOINT):
        spec = specialization(language_shares(result, languages, checkpoint=int(ckpt), keep=keep, weighted=weighted))
        rows += [(lang, int(ckpt), float(v)) for lang, v in spec.items()]
    return pd.DataFrame(rows, columns=["test_language", "checkpoint", "specialization"])
