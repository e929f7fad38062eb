"""The paper's headline effects of one task, as numbers with the intervals the figures show.

Each value and interval is computed exactly as the figure that shows it (same functions, same
test examples, same `bootstrap.mean_interval`), so a verdict on these numbers (verdicts.py) is a
verdict on the report. `paper_effects` takes one run (a training seed) or a list of runs of one
task (the pooled report: means over the seeds, intervals over the seeds' means):
- `full_in_language_pos` (Fig 11): each test language's share (%) of its own language among
  the top-k most positive training examples of the full model, over the test examples it
  classifies correctly, and its interval (`_ci`). Paper: roughly 20-40% with 5 languages.
- `heads_kept` (Table 1): fraction of heads each language's subnetwork keeps (mean over runs).
  Descriptive: Table 1 has no interval and the paper states a range (42-84 of 144 disabled),
  not a finding with a direction, so no verdict is taken on it.
- `subnet_in_language_change` (Fig 2 diagonal): in-language positive share with the
  language's own subnetwork at test time minus without it, on test examples both classify
  correctly, and its interval. Paper: +1 to +8 points for every language.
- `random_in_language_change` (Fig 3): the same change for the random masks (each seed's
  shuffled mask of the random test language), per seed, their mean with its interval (Fig 3's
  caption; random-mask seeds of one training seed are one unit when runs are pooled), and the
  identified subnetwork's change and interval on that language beside it.
- `similarity_vs_positive_share` (Fig 8, right): Pearson and Spearman r of mask cosine
  similarity with positive cross-language share over ordered language pairs (b's share of
  a's top positives), from the subnetwork variant Fig 8 uses, with the figure's Fisher-z
  intervals. Pooled: r = tanh(mean of the seeds' atanh r), its interval a t interval over the
  seeds' atanh r (`mean_interval`, seeds - 1 degrees of freedom), p from the one-sample t test.
Values a sweep cannot give (a variant absent) are left out.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from subnet_ray.analysis.bootstrap import mean_interval
from subnet_ray.analysis.influence_figures import missing_reason
from subnet_ray.analysis.mask_figures import SUBNET_VARIANTS, pair_table
from subnet_ray.analysis.results import TaskResults
from subnet_ray.analysis.shares import (
    compare_shares,
    correct_under_all,
    delta_interval,
    language_shares,
    mean_delta,
    shares_with_interval,
    specialization,
)
from subnet_ray.analysis.stats import correlate
from subnet_ray.subnetworks.masks import similarity_matrix


def _rounded(series) -> dict[str, float]:
    return {str(k): round(float(v), 4) for k, v in series.items()}


def _diag_ci(lo, hi, langs) -> dict[str, list[float | None]]:
    """Returns {language: [low, high]} of the diagonal of interval tables, rounded as summary.json's comparisons."""
    def r(v):
        return round(float(v), 6) if np.isfinite(v) else None
    return {str(lang): [r(lo.at[lang, lang]), r(hi.at[lang, lang])] for lang in langs}


def _change(runs: list[TaskResults], names: list[str]) -> tuple[dict, dict]:
    """Returns (in-language positive change of the mean over runs x names against full, its interval) as the
    figures compute it: the pairs of one run share its model, so each run is one unit of the interval."""
    langs = runs[0].languages
    comps = [compare_shares(x.influence, n, "full", langs) for x in runs for n in names]
    delta = specialization(mean_delta(comps))
    lo, hi = delta_interval(comps, [i // len(names) for i in range(len(comps))])
    return _rounded(delta), _diag_ci(lo, hi, delta.index)


def _similarity(runs: list[TaskResults]) -> dict | None:
    """Returns Fig 8's correlation of mask similarity with positive cross-language share (pooled over runs)."""
    name = next((n for n in SUBNET_VARIANTS if not any(missing_reason(x, [n]) for x in runs)), None)
    if name is None:
        return None
    per_run = []
    for x in runs:
        masked = [lang for lang in x.languages if lang in x.masks]
        if len(masked) < 2:
            return None
        res = x.influence[name]
        shares = language_shares(res, x.languages, keep=correct_under_all([res]))
        pairs = pair_table(similarity_matrix({lang: x.masks[lang] for lang in masked}), shares, "similarity", "share")
        per_run.append(correlate(pairs["similarity"], pairs["share"]))
    if len(per_run) == 1:
        return {"variant": name, **per_run[0].as_dict()}
    out: dict = {"variant": name, "n": int(sum(c.n for c in per_run)), "seeds": len(per_run)}
    for m in ("pearson", "spearman"):
        z = np.array([math.atanh(min(max(getattr(c, f"{m}_r"), -1 + 1e-12), 1 - 1e-12)) for c in per_run])
        if not np.isfinite(z).all():
            out |= {f"{m}_r": None, f"{m}_p": None, f"{m}_ci": [None, None], f"{m}_per_seed": None}
            continue
        lo, hi = mean_interval([np.array([[v]]) for v in z])
        out |= {f"{m}_r": float(np.tanh(z.mean())), f"{m}_p": float(stats.ttest_1samp(z, 0.0).pvalue),
                f"{m}_ci": [float(np.tanh(lo[0])), float(np.tanh(hi[0]))],
                f"{m}_per_seed": [round(float(getattr(c, f"{m}_r")), 6) for c in per_run]}
    return out


def paper_effects(t: TaskResults | list[TaskResults]) -> dict:
    """Returns the task's headline effects with their intervals (see the module docstring) as a JSON-ready dict."""
    runs = list(t) if isinstance(t, (list, tuple)) else [t]
    t = runs[0]
    langs, out = t.languages, {"task": t.task}
    masked = [lang for lang in langs if all(lang in x.masks for x in runs)]
    if masked:
        out["heads_kept"] = {lang: round(float(np.mean([np.mean(x.masks[lang]) for x in runs])), 4) for lang in masked}
    if not any(missing_reason(x, ["full"]) for x in runs):
        shares, lo, hi = shares_with_interval([x.influence["full"] for x in runs], langs)
        out["full_in_language_pos"] = _rounded(specialization(shares))
        out["full_in_language_pos_ci"] = _diag_ci(lo, hi, specialization(shares).index)
    if not any(missing_reason(x, ["full", "full+subnet"]) for x in runs):
        out["subnet_in_language_change"], out["subnet_in_language_change_ci"] = _change(runs, ["full+subnet"])
        randoms = [v.name for v in t.variants("full+random")]
        if randoms and not any(missing_reason(x, ["full", *randoms]) for x in runs):
            per_seed: dict[str, dict[str, float]] = {}
            for name in randoms:
                change = specialization(mean_delta([compare_shares(x.influence, name, "full", langs) for x in runs]))
                for lang, v in change.items():
                    per_seed.setdefault(str(lang), {})[name] = round(float(v), 4)
            mean, mean_ci = _change(runs, randoms)
            out["random_in_language_change"] = {
                lang: {"per_seed": seeds, "mean": mean.get(lang), "mean_ci": mean_ci.get(lang),
                       "subnet": out["subnet_in_language_change"].get(lang),
                       "subnet_ci": out["subnet_in_language_change_ci"].get(lang)}
                for lang, seeds in per_seed.items()
            }
    corr = _similarity(runs)
    if corr is not None:
        out["similarity_vs_positive_share"] = corr
    return out
