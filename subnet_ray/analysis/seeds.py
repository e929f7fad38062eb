"""The pooled report of a sweep with several training seeds: the headline numbers over seeds.

Each training seed has a report of its own, whose intervals are over that seed's test
examples (or its random-mask seeds): they say nothing of how far another training run would
move the numbers. With several training seeds, `build_seeds_report` writes one more folder:

- Figs 2, 4, 5, 6, 11 and 19 (composed masks), and the per-epoch curves of Figs 10 and 18,
  as the mean over the seeds (each seed's shares or changes on the test examples its models
  classify correctly),
  each value's 95% interval a t interval over the seeds' means with seeds - 1 degrees of
  freedom (`bootstrap.mean_interval`; Figs 6 and 18, and Fig 3's random masks: each seed's
  mean over its random-mask seeds, which share that seed's model, is one unit);
- Fig 3's comparison, the random masks' mean change in the random test language's
  in-language share beside the identified subnetwork's, pooled the same way (summary.json
  `comparisons`);
- the verdicts on the paper's findings (analysis/verdicts.py) from those pooled intervals
  (summary.json `effects`), and beside them each seed's own verdicts and how many seeds each
  finding holds on.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from subnet_ray.analysis.effects import paper_effects
from subnet_ray.analysis.figures import FigureWriter
from subnet_ray.analysis.epoch_figures import fig10, fig18
from subnet_ray.analysis.influence_figures import SIGNS, record_changes, fig02, fig04, fig05, fig06, fig11, fig19, missing_reason
from subnet_ray.analysis.report import CSS, clean_own_files, jsonable, provenance_html, table_html, figure_entries, figure_order, figures_html, verdicts_html
from subnet_ray.analysis.results import TaskResults
from subnet_ray.analysis.shares import compare_shares
from subnet_ray.analysis.verdicts import HOLDS, NULL_RULE, RULES, with_verdicts


def _random_baseline(w: FigureWriter, runs: list[TaskResults]) -> None:
    """Records Fig 3's random-mask mean change against the full model, pooled over runs and random seeds."""
    t = runs[0]
    names = [v.name for v in t.variants("full+random")]
    why = "needs influence results of full+random:SEED variants" if not names else next(
        (r for x in runs if (r := missing_reason(x, ["full", *names]))), None)
    if why:
        return w.skip(3, t.task, why)
    comps = {sign: [compare_shares(x.influence, n, "full", t.languages, sign=sign) for x in runs for n in names] for sign in SIGNS}
    record_changes(w, runs, f"full+random (mean of {len(names)} seeds) vs full", comps)


def seed_effects(by_seed: dict[int, list[TaskResults]]) -> tuple[dict, dict]:
    """Returns (effects per task and seed with their verdicts, seeds on which each finding holds, per task)."""
    effects: dict[str, dict[str, dict]] = {}
    holding: dict[str, dict[str, int]] = {}
    for seed, results in by_seed.items():
        for t in results:
            e = with_verdicts(paper_effects(t), len(t.languages))
            effects.setdefault(t.task, {})[str(seed)] = e
            for name, v in e["checks"].items():
                holding.setdefault(t.task, {}).setdefault(name, 0)
                holding[t.task][name] += v == HOLDS
    return effects, holding


def build_seeds_report(by_seed: dict[int, list[TaskResults]], out_dir: str | Path, sweep_name: str,
                       provenance: dict | None = None) -> dict:
    """Returns summary.json's content after writing the pooled report (see the module docstring) into `out_dir`."""
    if len(by_seed) < 2:
        raise ValueError(f"a pooled report needs at least two training seeds, got {sorted(by_seed)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_own_files(out)
    w = FigureWriter(out)
    tasks = list(dict.fromkeys(t.task for results in by_seed.values() for t in results))
    seeds_of = {task: [s for s, results in by_seed.items() if any(t.task == task for t in results)] for task in tasks}
    for task in tasks:
        runs = [t for results in by_seed.values() for t in results if t.task == task]
        for t in runs:
            t.validate()
        for make in (fig02, fig04, fig05, fig06, fig10, fig11, fig18, fig19):
            w.attempt(int(make.__name__[3:]), task, lambda: make(w, runs))
        w.attempt(3, task, lambda: _random_baseline(w, runs))
    effects, holding = seed_effects(by_seed)
    pooled = {}
    for task in tasks:
        runs = [t for results in by_seed.values() for t in results if t.task == task]
        pooled[task] = with_verdicts(paper_effects(runs), len(runs[0].languages))
    summary = jsonable({
        "sweep": sweep_name,
        "provenance": provenance or {},
        "training_seeds": sorted(by_seed),
        "tasks": tasks,
        "seeds_per_task": seeds_of,
        "shares": w.shares,
        "comparisons": w.comparisons,
        "effects": pooled,
        "verdict_rules": {**RULES, "null": NULL_RULE},
        "effects_per_seed": effects,
        "seeds_holding": holding,
        "figures": figure_entries(w.records),
        "skipped": w.skipped,
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    (out / "report.html").write_text(_html(summary, w, out))
    return summary


def _html(summary: dict, w: FigureWriter, out: Path) -> str:
    esc = html.escape
    seeds = ", ".join(map(str, summary["training_seeds"]))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>subnet-ray pooled report: {esc(summary['sweep'])}</title>",
             f"<style>{CSS}</style></head><body><h1>Sweep {esc(summary['sweep'])}: training seeds {esc(seeds)} pooled</h1>",
             "<p>Each training seed has its own report beside this one. Here every share and change is the mean over "
             "the training seeds, and its 95% interval is a t interval over the seeds' means (seeds - 1 degrees of freedom), "
             "widened by the variance of the test examples the seeds share, so it "
             "says how far another training run could move the number. Figures follow Choenni et al. (arXiv "
             "2311.08273); figNN is the paper's Figure NN.</p>",
             "<h2 id='provenance'>Provenance</h2>", *provenance_html(summary["provenance"], esc),
             *verdicts_html(summary["effects"], summary["tasks"], "The paper's headline effects, seeds pooled"),
             "<h2>The paper's headline effects, seed by seed</h2><p>Each seed's verdicts from its own report's intervals "
             "(over its test examples), by the same rules; the last row counts the seeds on which each finding holds.</p>"]
    for task, per_seed in summary["effects_per_seed"].items():
        rows = [{"training seed": s, **{k: v or "null" for k, v in e["checks"].items()}} for s, e in per_seed.items()]
        rows.append({"training seed": "seeds holding", **{k: f"{v}/{len(per_seed)}" for k, v in summary["seeds_holding"][task].items()}})
        parts += [f"<h3>{esc(task)}</h3>", table_html(pd.DataFrame(rows))]
    for task, comps in summary["comparisons"].items():
        random = next((k for k in comps if k.startswith("full+random")), None)
        own = comps.get("full+subnet vs full")
        if random and own:
            r, o = comps[random], own
            cells = [f"{lang}: random {v:+.1f} [{r['in_language_pos_change_ci'][lang][0]:+.1f}, "
                     f"{r['in_language_pos_change_ci'][lang][1]:+.1f}], own subnetwork {o['in_language_pos_change'][lang]:+.1f} "
                     f"[{o['in_language_pos_change_ci'][lang][0]:+.1f}, {o['in_language_pos_change_ci'][lang][1]:+.1f}]"
                     for lang, v in r["in_language_pos_change"].items() if lang in o["in_language_pos_change"]]
            parts.append(f"<p><b>Fig 3 ({esc(task)}), pooled:</b> change in the in-language positive share against the "
                         f"full model, {esc(random.removesuffix(' vs full'))}: {esc('; '.join(cells))} (percentage points, "
                         "95% t intervals over the training seeds' means, each the mean of its random-mask seeds, widened for their shared "
                         "test examples). Paper: random masks "
                         "change little.</p>")
    parts += figures_html(figure_order(w.records), summary["skipped"], out)
    parts.append("</body></html>")
    return "\n".join(parts)
