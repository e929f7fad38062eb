"""The paper's headline effects of one task, as numbers: what a planted truth must show.

Each value is computed exactly as the figure that shows it (same functions, same test
examples), so a check on these numbers is a check on the report:
- `full_in_language_pos` (Fig 11): each test language's share (%) of its own language among
  the top-k most positive training examples of the full model, over the test examples it
  classifies correctly. Paper: roughly 20-40% with 5 languages, above chance (100/K).
- `heads_kept` (Table 1): fraction of heads each language's subnetwork keeps (paper: 42-84
  of 144 disabled, i.e. 42-71% kept).
- `subnet_in_language_change` (Fig 2 diagonal): in-language positive share with the
  language's own subnetwork at test time minus without it, on test examples both classify
  correctly. Paper: +1 to +8 points for every language.
- `random_in_language_change` (Fig 3): the same change for the random masks (each seed's
  shuffled mask of the random test language), per seed, their mean, and the identified
  subnetwork's change on that language beside it. Paper: random masks change little.
- `similarity_vs_positive_share` (Fig 8, right): Pearson and Spearman r of mask cosine
  similarity with positive cross-language share over ordered language pairs (b's share of
  a's top positives), from the subnetwork variant Fig 8 uses. Paper: positive.
Values a sweep cannot give (a variant absent) are left out.
"""
from __future__ import annotations

import numpy as np

from subnet_ray.analysis.influence_figures import missing_reason
from subnet_ray.analysis.mask_figures import SUBNET_VARIANTS, pair_table
from subnet_ray.analysis.results import TaskResults
from subnet_ray.analysis.shares import compare_shares, correct_under_all, language_shares, specialization
from subnet_ray.analysis.stats import correlate
from subnet_ray.subnetworks.masks import similarity_matrix


def _rounded(series) -> dict[str, float]:
    return {str(k): round(float(v), 4) for k, v in series.items()}


def paper_effects(t: TaskResults) -> dict:
    """Returns the task's headline effects (see the module docstring) as a JSON-ready dict."""
    langs, out = t.languages, {"task": t.task}
    if t.masks:
        out["heads_kept"] = {lang: round(float(np.mean(t.masks[lang])), 4) for lang in langs if lang in t.masks}
    if not missing_reason(t, ["full"]):
        full = t.influence["full"]
        out["full_in_language_pos"] = _rounded(specialization(language_shares(full, langs, keep=correct_under_all([full]))))
    if not missing_reason(t, ["full", "full+subnet"]):
        delta = specialization(compare_shares(t.influence, "full+subnet", "full", langs).delta)
        out["subnet_in_language_change"] = _rounded(delta)
        randoms = [v.name for v in t.variants("full+random")]
        if randoms and not missing_reason(t, ["full", *randoms]):
            per_seed: dict[str, dict[str, float]] = {}
            for name in randoms:
                change = specialization(compare_shares(t.influence, name, "full", langs).delta)
                for lang, v in change.items():
                    per_seed.setdefault(str(lang), {})[name] = round(float(v), 4)
            out["random_in_language_change"] = {
                lang: {"per_seed": seeds, "mean": round(float(np.mean(list(seeds.values()))), 4),
                       "subnet": out["subnet_in_language_change"].get(lang)}
                for lang, seeds in per_seed.items()
            }
    name = next((n for n in SUBNET_VARIANTS if not missing_reason(t, [n])), None)
    masked = [lang for lang in langs if lang in t.masks]
    if name is not None and len(masked) >= 2:
        res = t.influence[name]
        shares = language_shares(res, langs, keep=correct_under_all([res]))
        sim = similarity_matrix({lang: t.masks[lang] for lang in masked})
        pairs = pair_table(sim, shares, "similarity", "share")
        corr = correlate(pairs["similarity"], pairs["share"])
        out["similarity_vs_positive_share"] = {"variant": name, **corr.as_dict()}
    return out


def effect_checks(effects: dict) -> dict[str, bool | None]:
    """Returns whether each headline effect is as the paper reports it (None: the sweep cannot tell).

    - full_cross_language: every language's in-language positive share is above chance
      (100/K) and below 70% (Fig 11: roughly 20-40% with 5 languages);
    - heads_kept: every subnetwork keeps 25-75% of the heads (paper: 42-71%);
    - subnet_raises_in_language: the own subnetwork raises the in-language positive share for
      all languages but at most one, by at least +2 points on average (Fig 2: +1 to +8 each);
    - random_below_subnet: for each random test language, the random masks' mean change is
      below the identified subnetwork's (Fig 3);
    - similarity_tracks_influence: Pearson r of mask similarity with positive cross-language
      share is positive (Fig 8).
    """
    out: dict[str, bool | None] = {}
    shares = effects.get("full_in_language_pos")
    out["full_cross_language"] = None if not shares else all(100 / len(shares) < v < 70 for v in shares.values())
    kept = effects.get("heads_kept")
    out["heads_kept"] = None if not kept else all(0.25 <= v <= 0.75 for v in kept.values())
    change = effects.get("subnet_in_language_change")
    out["subnet_raises_in_language"] = None if not change else (
        sum(v > 0 for v in change.values()) >= len(change) - 1 and float(np.mean(list(change.values()))) >= 2.0)
    randoms = effects.get("random_in_language_change")
    out["random_below_subnet"] = None if not randoms else all(
        r["subnet"] is not None and r["mean"] < r["subnet"] for r in randoms.values())
    corr = effects.get("similarity_vs_positive_share", {}).get("pearson_r")
    out["similarity_tracks_influence"] = None if corr is None else corr > 0
    return out
