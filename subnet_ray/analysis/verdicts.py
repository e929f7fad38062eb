"""Verdicts on the paper's findings, decided from the same 95% intervals the figures show.

Each finding is `holds` (the paper's direction, its interval clear of 0 or of the paper's own
bound), `inconclusive` (the interval includes it), `contradicted` (the opposite direction, the
interval clear of it), or None (`null` in JSON: not measured, or the interval undefined: one test
example, fewer than 4 pairs). The only bounds are 0 and the
paper's chance level (100/K of K training languages, Fig 11); no effect size is required that
the paper does not state.

A finding the paper states for every language (Figs 2, 3, 11) is decided per test language from
that language's interval, then: holds if it holds for every measured language, contradicted if
it is contradicted for any, inconclusive otherwise. With no effect anywhere, each language is
contradicted by chance 2.5% of the time (one side of a 95% interval), so K languages give a
false `contradicted` with probability 1 - 0.975^K (12% at K = 5); the per-language evidence is
kept beside each verdict (`evidence`). Measured by benchmarks/verdict_rates.py (notes/NOTES.md).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

HOLDS, INCONCLUSIVE, CONTRADICTED = "holds", "inconclusive", "contradicted"

# One line each: the report prints them as they are.
RULES = {
    "full_cross_language": "Fig 11: holds if every test language's in-language positive share with the full model has its "
                           "95% interval above chance (100/K); contradicted if any lies below chance; else inconclusive.",
    "subnet_raises_in_language": "Fig 2: holds if every test language's change in in-language positive share (own subnetwork "
                                 "vs full model) has its 95% interval above 0; contradicted if any lies below 0; else inconclusive.",
    "random_below_subnet": "Fig 3: holds if, for every random test language, the random masks' mean change has its 95% interval "
                           "wholly below the own subnetwork's; contradicted if wholly above for any; else inconclusive.",
    "similarity_tracks_influence": "Fig 8: holds if the Pearson r of mask cosine similarity with positive cross-language share "
                                   "has its 95% interval above 0; contradicted if below 0; else inconclusive.",
}
NULL_RULE = ("not measured (the sweep lacks the variants or languages the figure needs), or its interval is undefined "
             "(fewer than 2 test examples, fewer than 4 pairs).")


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def verdict(low: float | None, high: float | None, bound: float = 0.0) -> str | None:
    """Returns holds (interval above `bound`, the paper's direction), contradicted (below it), inconclusive
    (it includes the bound) or None (no interval)."""
    if not _finite(low, high):
        return None
    return HOLDS if low > bound else CONTRADICTED if high < bound else INCONCLUSIVE


def below(a: list | None, b: list | None) -> str | None:
    """Returns holds if interval a lies wholly below interval b, contradicted if wholly above, inconclusive if
    they overlap, None if either is missing."""
    if not a or not b or not _finite(*a, *b):
        return None
    return HOLDS if a[1] < b[0] else CONTRADICTED if a[0] > b[1] else INCONCLUSIVE


def every(verdicts: Iterable[str | None]) -> str | None:
    """Returns the verdict on a claim made for every language: holds if it holds for each, contradicted if for any,
    else inconclusive (also when some language has no interval: the claim is not shown for it); None if no
    language has one."""
    verdicts = list(verdicts)
    got = [v for v in verdicts if v is not None]
    if not got:
        return None
    return CONTRADICTED if CONTRADICTED in got else HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def paper_verdicts(effects: dict, n_languages: int) -> tuple[dict[str, str | None], dict[str, dict]]:
    """Returns (finding -> verdict, finding -> the values and intervals it was decided from) for one task's
    `effects.paper_effects`; `n_languages` (training languages) sets Fig 11's chance level."""
    checks: dict[str, str | None] = {}
    evidence: dict[str, dict] = {}

    def per_language(name: str, values: dict | None, cis: dict | None, bound: float) -> None:
        rows = {lang: {"value": v, "ci": (cis or {}).get(lang), "bound": bound,
                       "verdict": verdict(*((cis or {}).get(lang) or (None, None)), bound=bound)}
                for lang, v in (values or {}).items()}
        checks[name] = every(r["verdict"] for r in rows.values())
        evidence[name] = rows

    per_language("full_cross_language", effects.get("full_in_language_pos"), effects.get("full_in_language_pos_ci"),
                 round(100 / n_languages, 6))
    per_language("subnet_raises_in_language", effects.get("subnet_in_language_change"),
                 effects.get("subnet_in_language_change_ci"), 0.0)
    randoms = effects.get("random_in_language_change") or {}
    evidence["random_below_subnet"] = {
        lang: {"random": r["mean"], "random_ci": r.get("mean_ci"), "subnet": r["subnet"], "subnet_ci": r.get("subnet_ci"),
               "verdict": below(r.get("mean_ci"), r.get("subnet_ci"))} for lang, r in randoms.items()}
    checks["random_below_subnet"] = every(r["verdict"] for r in evidence["random_below_subnet"].values())
    corr = effects.get("similarity_vs_positive_share") or {}
    ci = corr.get("pearson_ci") or [None, None]
    checks["similarity_tracks_influence"] = verdict(*ci)
    evidence["similarity_tracks_influence"] = {"variant": corr.get("variant"), "value": corr.get("pearson_r"), "ci": ci,
                                               "bound": 0.0, "n": corr.get("n"), "verdict": checks["similarity_tracks_influence"]} if corr else {}
    return checks, evidence


def with_verdicts(effects: dict, n_languages: int) -> dict:
    """Returns `effects` with its verdicts (`checks`) and what decided them (`evidence`) added."""
    checks, evidence = paper_verdicts(effects, n_languages)
    return effects | {"checks": checks, "evidence": evidence}


def evidence_text(name: str, ev: dict) -> str:
    """Returns one line of the values and intervals behind a verdict, e.g. 'xa +3.1 [+1.0, +5.2] holds; ...'."""
    def ci(pair) -> str:
        return f"[{pair[0]:+.2f}, {pair[1]:+.2f}]" if pair and _finite(*pair) else "[n/a]"

    def val(v) -> str:
        return f"{v:+.2f}" if v is not None and math.isfinite(v) else "n/a"

    if not ev:
        return "not measured"
    if name == "similarity_tracks_influence":
        return f"{ev['variant']}: Pearson r {val(ev['value'])} {ci(ev['ci'])}, n={ev['n']}"
    if name == "random_below_subnet":
        return "; ".join(f"{lang}: random {val(r['random'])} {ci(r['random_ci'])} vs own {val(r['subnet'])} "
                         f"{ci(r['subnet_ci'])} {r['verdict'] or 'null'}" for lang, r in ev.items())
    return "; ".join(f"{lang} {val(r['value'])} {ci(r['ci'])} {r['verdict'] or 'null'}" for lang, r in ev.items())
