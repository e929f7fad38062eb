"""Headline numbers of one task: what a researcher compares across runs, sweeps and branches.

Per variant (see results.py for the names): final test accuracy per language and its mean,
the in-language positive and negative share per test language and their mean (language
specialisation), and for every variant but `full` the change of that in-language share against
the full model on test examples both classify correctly (the diagonals of Figs 2, 4 and 6).
Per task: heads disabled per language. Keys are flat ('test_accuracy/xa', 'share_in_pos_mean')
so the orchestration can log them as metrics and `compare` can lay them side by side.
"""
from __future__ import annotations

import numpy as np

from subnet_ray.analysis.results import TaskResults
from subnet_ray.analysis.shares import compare_shares, language_shares, specialization

SIGNS = ("pos", "neg")


def _accuracy(t: TaskResults, variant: str) -> dict[str, float]:
    """Returns test accuracy (fraction) per language at the variant's last test checkpoint, {} if none."""
    d = t.accuracy[(t.accuracy["variant"] == variant) & (t.accuracy["split"] == "test")]
    if d.empty:
        return {}
    d = d[d["epoch"] == d["epoch"].max()]
    got = dict(zip(d["language"], d["accuracy"].astype(float)))
    return {lang: got[lang] for lang in t.languages if lang in got}


def _with_mean(prefix: str, per_lang: dict[str, float]) -> dict[str, float]:
    if not per_lang:
        return {}
    return {**{f"{prefix}/{k}": float(v) for k, v in per_lang.items()}, f"{prefix}_mean": float(np.mean(list(per_lang.values())))}


def variant_metrics(t: TaskResults) -> dict[str, dict[str, float]]:
    """Returns variant -> {metric: value}: test_accuracy, share_in_{pos,neg} and change_in_{pos,neg} (vs full).

    Accuracies are fractions; shares and changes are percentages / percentage points. A metric
    the results cannot give (no test predictions, no full model to compare with) is absent.
    """
    out: dict[str, dict[str, float]] = {}
    for variant in dict.fromkeys([*t.influence, *t.accuracy["variant"].unique()]):
        m = _with_mean("test_accuracy", _accuracy(t, variant))
        if variant in t.influence:
            for sign in SIGNS:
                m |= _with_mean(f"share_in_{sign}", specialization(language_shares(t.influence[variant], t.languages, sign=sign)).to_dict())
                if variant != "full" and "full" in t.influence:
                    try:
                        delta = compare_shares(t.influence, variant, "full", t.languages, sign=sign).delta
                    except ValueError:  # no test example both classify correctly: no change to report
                        continue
                    m |= _with_mean(f"change_in_{sign}", specialization(delta).to_dict())
        if m:
            out[variant] = m
    return out


def heads_disabled(t: TaskResults) -> dict[str, int]:
    """Returns the number of heads each language's identified subnetwork disables."""
    return {lang: int((~np.asarray(t.masks[lang], dtype=bool)).sum()) for lang in t.languages if lang in t.masks}


def model_of(variant: str) -> str:
    """Returns the trained model a variant scores: 'full', 'sft' or 'random-sft:SEED'."""
    if variant.startswith("random-sft:"):
        return variant
    return "sft" if variant.startswith("sft+") else "full"


PRIMARY = {"full": "full", "sft": "sft+subnet"}  # the variant a model is judged by; random-sft:S is its own


def primary_variant(model: str) -> str:
    """Returns the variant a trained model's run reports without prefix: full -> full, sft -> sft+subnet."""
    return PRIMARY.get(model, model)


def model_metrics(t: TaskResults, model: str, per_variant: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """Returns the metrics of one trained model's run: its primary variant's metrics as they are, every other
    variant scored with that model prefixed '<variant>/', the Fig 2 change (full+subnet vs full) as the full
    model's change, and heads disabled per language."""
    per_variant = variant_metrics(t) if per_variant is None else per_variant
    primary = primary_variant(model)
    out: dict[str, float] = {f"heads_disabled/{k}": float(v) for k, v in heads_disabled(t).items()}
    for variant, m in per_variant.items():
        if model_of(variant) != model:
            continue
        if variant == primary:
            out |= m
        else:
            out |= {f"{variant}/{k}": v for k, v in m.items()}
    if model == "full":  # the full model's own specialisation change is its subnetwork's (Fig 2 diagonal)
        out |= {k: v for k, v in per_variant.get("full+subnet", {}).items() if k.startswith("change_in_")}
    return out


# ---- correlations and verdicts as run metrics and tags ------------------------------------------------

CORR_STATS = ("r", "p", "low", "high")  # per method (pearson, spearman): r, two-sided p, 95% interval
VERDICT_CODE = {"holds": 1.0, "inconclusive": 0.0, "contradicted": -1.0}  # the `verdict/<finding>` metric; null: none


def slug(variant: str) -> str:
    """Returns a variant name as a metric-name segment: 'sft+subnet' -> 'sft_subnet', 'random-sft:3' -> 'random-sft_3'."""
    return variant.replace("+", "_").replace(":", "_")


def correlation_key(c: dict) -> str:
    """Returns the metric prefix of one report correlation: corr/<figNN>/<variant>[/layer<k>]."""
    return f"corr/{c['figure']}/{slug(c['variant'])}" + (f"/layer{c['layer']}" if c.get("layer") is not None else "")


def correlation_metrics(correlations: list[dict], model: str | None = None) -> dict[str, float]:
    """Returns '<corr key>/{pearson,spearman}_{r,p,low,high}' and '<corr key>/n' of every correlation whose variant
    the trained `model` scores (all with None); undefined values (NaN, None) are left out."""
    out: dict[str, float] = {}
    for c in correlations:
        if model is not None and model_of(c["variant"]) != model:
            continue
        key = correlation_key(c)
        for m in ("pearson", "spearman"):
            low, high = c.get(f"{m}_ci") or (None, None)
            for stat, v in zip(CORR_STATS, (c.get(f"{m}_r"), c.get(f"{m}_p"), low, high)):
                if v is not None and np.isfinite(v):
                    out[f"{key}/{m}_{stat}"] = float(v)
        out[f"{key}/n"] = float(c["n"])
    return out


def verdict_model(finding: str, evidence: dict) -> str:
    """Returns the trained model a finding is about: Fig 8's is the model of the variant it used, the rest the full model's."""
    variant = (evidence or {}).get("variant") if finding == "similarity_tracks_influence" else None
    return model_of(variant) if variant else "full"


def verdict_fields(effects: dict, model: str | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """Returns (metrics, tags) of one task's verdicts on the run of `model` (all with None): tag 'verdict/<finding>'
    = holds | inconclusive | contradicted | null, metric 'verdict/<finding>' = 1 | 0 | -1 (none for null)."""
    metrics, tags = {}, {}
    for finding, v in (effects.get("checks") or {}).items():
        if model is not None and verdict_model(finding, effects.get("evidence", {}).get(finding)) != model:
            continue
        tags[f"verdict/{finding}"] = v or "null"
        if v is not None:
            metrics[f"verdict/{finding}"] = VERDICT_CODE[v]
    return metrics, tags


def pooled_fields(summary: dict, prefix: str) -> tuple[dict[str, float], dict[str, str]]:
    """Returns (metrics, tags) of a pooled report for the sweep's parent run: per task '<prefix><task>/' before
    the names of `correlation_metrics` (Fig 8 pooled over the seeds) and `verdict_fields`."""
    metrics, tags = {}, {}
    for task, effects in (summary.get("effects") or {}).items():
        corr = effects.get("similarity_vs_positive_share")
        m, t = verdict_fields(effects)
        if corr:
            m |= correlation_metrics([{"figure": "fig08", **corr}])
        metrics |= {f"{prefix}{task}/{k}": v for k, v in m.items()}
        tags |= {f"{prefix}{task}/{k}": v for k, v in t.items()}
    return metrics, tags
