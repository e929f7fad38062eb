"""The paper's cross-language influence figures (2-6, 11, 19) for one task, and what they share.

Each `figNN(writer, task)` makes the figure from the variants the task has, or records
why it could not. Figs 2, 4, 5, 6, 10, 11, 18 and 19 also take a list of one task's results,
one per training seed: they then show the mean over the seeds, with intervals over the
seeds' means (the sweep's pooled report, analysis/seeds.py).
Shares are over the top-k most positive / negative training examples of the summed TracIn
ranking (checkpoint -1); the figures over epochs (7, 10, 18) are in epoch_figures.py.
Every share and change carries its 95% interval (ci_low, ci_high) in the CSV and summary.json,
from `bootstrap.mean_interval` (a t interval over test examples, or over the run means where
runs are averaged; each caption says which); heatmaps of changes mark with * the cells whose
interval excludes 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from subnet_ray.analysis.figures import FigureWriter
from subnet_ray.analysis.results import SUM_CHECKPOINT, InfluenceResult, TaskResults
from subnet_ray.analysis.shares import (
    ShareComparison,
    compare_shares,
    delta_interval,
    mean_delta,
    shares_with_interval,
    specialization,
)
from subnet_ray.analysis.bootstrap import excludes_zero

SIGNS = {"pos": "most positive", "neg": "most negative"}


def top_k(result: InfluenceResult) -> int:
    """Returns k, the length of the rankings."""
    return int(result.topk["rank"].max()) + 1 if len(result.topk) else 0


def missing_reason(t: TaskResults, names: list[str], checkpoint: str = "sum") -> str | None:
    """Returns why the named variants cannot be used (absent or without the rankings needed), or None."""
    absent = [n for n in names if n not in t.influence]
    if absent:
        return f"needs influence results of variant(s) {absent}; have {sorted(t.influence) or 'none'}"
    for n in names:
        ckpts = t.influence[n].topk["checkpoint"]
        if checkpoint == "sum" and not (ckpts == SUM_CHECKPOINT).any():
            return f"variant {n!r} has no summed TracIn rankings (checkpoint -1)"
        if checkpoint == "epochs" and not (ckpts != SUM_CHECKPOINT).any():
            return f"variant {n!r} has no per-checkpoint rankings (checkpoint >= 1)"
    return None


def cells(table: pd.DataFrame, value: str, **const) -> pd.DataFrame:
    """Returns a rows x columns table as long form: const columns, row name, column name, value."""
    r, c = table.index.name or "row", table.columns.name or "column"
    return pd.DataFrame([{**const, r: i, c: j, value: float(table.at[i, j])} for i in table.index for j in table.columns])


CI_NOTE = "Intervals: {method}, in the CSV (ci_low, ci_high); * marks changes whose interval excludes 0."


def ci_method(units: int = 1, what: str = "runs") -> str:
    """Returns the caption's words for `bootstrap.mean_interval`'s method with `units` averaged runs (1: test examples)."""
    if units <= 1:
        return "95% t intervals over test examples (mean +- t(n-1) sd/sqrt(n))"
    return (f"95% intervals over the {units} {what}: t on their means ({units - 1} degrees of freedom), widened by "
            "the variance of the test examples they share (Satterthwaite df, never below the means' own t interval)")


def cells_ci(table: pd.DataFrame, lo: pd.DataFrame, hi: pd.DataFrame, value: str, **const) -> pd.DataFrame:
    """Returns `cells(table)` with the interval of each cell (ci_low, ci_high) and whether it excludes 0 (significant)."""
    out = cells(table, value, **const)
    sig = excludes_zero(lo, hi)
    r, c = table.index.name or "row", table.columns.name or "column"
    out["ci_low"] = [float(lo.at[i, j]) for i, j in zip(out[r], out[c])]
    out["ci_high"] = [float(hi.at[i, j]) for i, j in zip(out[r], out[c])]
    out["significant"] = [bool(sig.at[i, j]) for i, j in zip(out[r], out[c])]
    return out


def _diag_text(delta: pd.Series) -> str:
    """Returns 'rises for i/L test languages (de +2.1, en -0.3)' for per-language changes."""
    parts = ", ".join(f"{lang} {v:+.1f}" for lang, v in delta.items())
    return f"rises for {int((delta > 0).sum())}/{len(delta)} test languages ({parts})"


def runs_of(t: TaskResults | list[TaskResults]) -> list[TaskResults]:
    """Returns one task's results as a list of runs (training seeds): [t] for a single TaskResults."""
    return list(t) if isinstance(t, (list, tuple)) else [t]


def record_changes(w: FigureWriter, t: TaskResults | list[TaskResults], name: str, comps: dict[str, list[ShareComparison]]) -> dict[str, pd.DataFrame]:
    """Returns the (mean) delta per sign and records the in-language changes in the summary.

    `comps[sign]` runs over `t`'s runs first, then the pairs compared within each run.
    """
    runs = runs_of(t)
    t = runs[0]
    deltas = {sign: mean_delta(cs) for sign, cs in comps.items()}
    per_run = len(comps["pos"]) // len(runs)
    # Pairs of one training seed share its model: average them, then the seeds are the independent units.
    intervals = {sign: delta_interval(cs, [i // per_run for i in range(len(cs))]) for sign, cs in comps.items()}
    weighted = [compare_shares(r.influence, c.a, c.b, t.languages, sign="pos", weighted=True)
                for i, r in enumerate(runs) for c in comps["pos"][i * per_run:(i + 1) * per_run]]

    def diag_ci(sign: str) -> dict:
        lo, hi = intervals[sign]
        return {lang: [round(float(lo.at[lang, lang]), 6), round(float(hi.at[lang, lang]), 6)] for lang in specialization(deltas[sign]).index}

    w.comparisons.setdefault(t.task, {})[name] = {
        "variants": [[c.a, c.b] for c in comps["pos"]],
        "in_language_pos_change": specialization(deltas["pos"]).round(6).to_dict(),
        "in_language_pos_change_ci": diag_ci("pos"),
        "in_language_neg_change": specialization(deltas["neg"]).round(6).to_dict(),
        "in_language_neg_change_ci": diag_ci("neg"),
        "in_language_pos_change_score_weighted": specialization(mean_delta(weighted)).round(6).to_dict(),
        # Each pair keeps its own jointly-correct examples, so n is per pair (keyed by variant a).
        "n_test_examples": {c.a: {lang: int(n) for lang, n in c.n.items()} for c in comps["pos"][:per_run]}
        if len(runs) == 1 else {"summed over runs": {lang: int(n) for lang, n in
                                                     pd.concat([c.n for c in comps["pos"]], axis=1).sum(axis=1).items()}},
    }
    w.intervals[(t.task, name)] = intervals
    return deltas


def pooled_note(runs: list[TaskResults], what: str = "change") -> str:
    """Returns the caption's note on pooling training seeds ('' for one run)."""
    return "" if len(runs) == 1 else (f" Mean over {len(runs)} training seeds (each seed's {what} on the test examples its "
                                      "models classify correctly); the interval is over the seeds' means.")


def _delta_figure(w: FigureWriter, t: TaskResults | list[TaskResults], number: int, slug: str, pairs: list[tuple[str, str]],
                  name: str, what: str, paper: str, extra: str = "") -> None:
    """Makes a heatmap of share(a) - share(b) per sign, averaged over the pairs (and the runs of `t`)."""
    runs = runs_of(t)
    t = runs[0]
    why = next((r for x in runs if (r := missing_reason(x, sorted({n for p in pairs for n in p})))), None)
    if why:
        return w.skip(number, t.task, why)
    comps = {sign: [compare_shares(x.influence, a, b, t.languages, sign=sign) for x in runs for a, b in pairs] for sign in SIGNS}
    deltas = record_changes(w, runs, name, comps)
    ci = w.intervals[(t.task, name)]
    data = pd.concat([cells_ci(deltas[s], *ci[s], "delta_pct", sign=SIGNS[s]) for s in SIGNS], ignore_index=True)
    k = top_k(t.influence[pairs[0][0]])
    n = pd.concat([c.n for c in comps["pos"]], axis=1).sum(axis=1).astype(int)
    summed = ", summed over pairs" if len(pairs) > 1 else ""
    summed += " and training seeds" if len(runs) > 1 and summed else (", summed over training seeds" if len(runs) > 1 else "")
    caption = (
        f"Change (percentage points) in each training language's share of the top-{k} most positive (left) and most "
        f"negative (right) training examples, {what}; rows are test languages, columns training languages; only test "
        f"examples both models classify correctly (n per language{summed}: "
        f"{', '.join(f'{lang} {v}' for lang, v in n.items())}). "
        f"Here the in-language positive share {_diag_text(specialization(deltas['pos']))}; its interval lies above 0 "
        f"for {int(specialization(ci['pos'][0]).gt(0).sum())} of them.{extra}{pooled_note(runs)} "
        f"{CI_NOTE.format(method=ci_method(*units_of(runs, pairs)))} Paper: {paper}"
    )
    w.heatmap(number, t.task, slug, data, row="test_language", col="train_language", value="delta_pct",
              panel="sign", diverging=True, caption=caption, mark="significant", title=f"{t.task}: {name}",
              xlabel="training language", ylabel="test language")


def units_of(runs: list[TaskResults], pairs: list) -> tuple[int, str]:
    """Returns how many independent runs an averaged interval is over, and what they are (as `record_changes` groups them)."""
    if len(runs) > 1:
        return len(runs), "training seeds"
    return len(pairs), "random-mask seeds"


def fig02(w: FigureWriter, t: TaskResults | list[TaskResults]) -> None:
    """Fig 2: own subnetwork vs full model at test time, after full fine-tuning."""
    _delta_figure(w, t, 2, "subnet_vs_full", [("full+subnet", "full")], "full+subnet vs full",
                  "when each test language's own subnetwork is applied to the fully fine-tuned model at test time, "
                  "compared with the full model",
                  "the in-language positive share rises for every language of every task (+1 to +8); changes in "
                  "negative influence are less clear (Fig 2).")


def fig04(w: FigureWriter, t: TaskResults | list[TaskResults]) -> None:
    """Fig 4: SFT model with its subnetworks vs the fully fine-tuned full model."""
    _delta_figure(w, t, 4, "sft_vs_full", [("sft+subnet", "full")], "sft+subnet vs full",
                  "for the sparse-fine-tuned model with each test language's subnetwork, compared with the fully "
                  "fine-tuned full model",
                  "after SFT the in-language reliance of some subnetworks decreases (Korean for PAWS-X; Chinese, "
                  "French, Spanish for MARC), so SFT does not always strengthen specialisation (Fig 4).")


def fig06(w: FigureWriter, t: TaskResults | list[TaskResults]) -> None:
    """Fig 6: SFT with random masks vs full fine-tuning, averaged over seeds."""
    runs = runs_of(t)
    seeds = runs[0].variants("random-sft")
    if not seeds:
        return w.skip(6, runs[0].task, "needs influence results of at least one random-sft:SEED variant")
    acc = float(np.mean([_final_accuracy(r, [v.name for v in seeds]) for r in runs]))
    extra = f" Mean final accuracy of the random-mask SFT models: {100 * acc:.1f}%." if not np.isnan(acc) else ""
    _delta_figure(w, t, 6, "random_sft_vs_full", [(v.name, "full") for v in seeds],
                  f"random-sft (mean of {len(seeds)} seeds) vs full",
                  f"for models sparse-fine-tuned with random masks (each language's mask shuffled), each test language's "
                  f"random mask at test time, compared with the fully fine-tuned full model, averaged over "
                  f"{len(seeds)} seed(s) ({', '.join(str(v.seed) for v in seeds)})",
                  "random-mask SFT makes subnetworks far more reliant on in-language data (English +64, to 97%), "
                  "yet they perform considerably worse (about 56% accuracy) (Fig 6).", extra)


def _final_accuracy(t: TaskResults, variants: list[str]) -> float:
    """Returns the mean accuracy at each variant's last epoch (test split if present, else dev), or NaN."""
    acc = t.accuracy[t.accuracy["variant"].isin(variants)]
    if acc.empty:
        return float("nan")
    split = "test" if (acc["split"] == "test").any() else "dev"
    acc = acc[acc["split"] == split]
    last = acc.groupby("variant")["epoch"].transform("max")
    return float(acc[acc["epoch"] == last]["accuracy"].mean())


def fig03(w: FigureWriter, t: TaskResults) -> None:
    """Fig 3: random and suboptimal masks vs the full model, per baseline test language."""
    rows = [(f"R{v.seed}", v.name) for v in t.variants("full+random")]
    rows += [(f"mask of {v.language}", v.name) for v in t.variants("full+subopt")]
    if not rows:
        return w.skip(3, t.task, "needs influence results of full+random:SEED or full+subopt:LANG variants")
    why = missing_reason(t, ["full"] + [name for _, name in rows])
    if why:
        return w.skip(3, t.task, why)
    tested = set().union(*(set(t.influence[name].topk["test_language"]) for _, name in rows))
    if "full+subnet" in t.influence and not missing_reason(t, ["full+subnet"]):
        rows.insert(0, ("own mask", "full+subnet"))
    comps = {(name, sign): compare_shares(t.influence, name, "full", t.languages, sign=sign) for _, name in rows for sign in SIGNS}
    for label, name in rows:
        if name != "full+subnet":  # recorded by Fig 2
            record_changes(w, t, f"{name} vs full", {sign: [comps[name, sign]] for sign in SIGNS})
    random_names = [name for label, name in rows if name.startswith("full+random:")]
    if random_names:  # the baseline the paper compares with the identified subnetwork: the mean over seeds
        record_changes(w, t, f"full+random (mean of {len(random_names)} seeds) vs full",
                {sign: [comps[name, sign] for name in random_names] for sign in SIGNS})
    for lang in [lang for lang in t.languages if lang in tested]:
        ci = {(name, sign): delta_interval([comps[name, sign]]) for _, name in rows for sign in SIGNS}
        data = pd.DataFrame([
            {"sign": SIGNS[sign], "mask": label, "train_language": j, "delta_pct": float(comps[name, sign].delta.at[lang, j]),
             "ci_low": float(ci[name, sign][0].at[lang, j]), "ci_high": float(ci[name, sign][1].at[lang, j])}
            for sign in SIGNS for label, name in rows if lang in comps[name, sign].delta.index for j in t.languages
        ])
        data["significant"] = (data["ci_low"] > 0) | (data["ci_high"] < 0)
        rand = [comps[name, "pos"] for label, name in rows if label.startswith("R") and lang in comps[name, "pos"].delta.index]
        rand_text = ""
        if rand:
            lo, hi = delta_interval(rand)
            rand_text = (f" Mean of the {len(rand)} random mask(s): {float(mean_delta(rand).at[lang, lang]):+.1f} "
                         f"[{float(lo.at[lang, lang]):+.1f}, {float(hi.at[lang, lang]):+.1f}] ({ci_method(len(rand), 'random-mask seeds')}).")
        own = {label: float(comps[name, "pos"].delta.at[lang, lang]) for label, name in rows if lang in comps[name, "pos"].delta.index}
        caption = (
            f"Test language {lang}, full fine-tuned model: change (percentage points) in each training language's share "
            f"of the top-{top_k(t.influence['full'])} most positive (left) and most negative (right) training examples "
            f"when applying random masks (R = {lang}'s mask shuffled with that seed), other languages' masks (suboptimal) "
            f"or {lang}'s own mask, compared with no mask. In-language ({lang}) positive change: "
            f"{', '.join(f'{k} {v:+.1f}' for k, v in own.items())}.{rand_text} {CI_NOTE.format(method=ci_method())} "
            "Paper (PAWS-X, German): random masks change little "
            "and never raise German's share, while suboptimal masks behave unlike random ones (e.g. much more negative "
            "influence from Korean) (Fig 3)."
        )
        w.heatmap(3, t.task, f"baselines_{lang}", data, row="mask", col="train_language", value="delta_pct",
                  panel="sign", diverging=True, caption=caption, mark="significant", title=f"{t.task}: baselines on test language {lang}",
                  xlabel="training language", ylabel="mask at test time")


def _absolute(w: FigureWriter, t: TaskResults | list[TaskResults], number: int, slug: str, name: str, what: str, paper: str) -> None:
    runs = runs_of(t)
    t = runs[0]
    why = next((r for x in runs if (r := missing_reason(x, [name]))), None)
    if why:
        return w.skip(number, t.task, why)
    res = t.influence[name]
    pooled = {s: shares_with_interval([x.influence[name] for x in runs], t.languages, sign=s) for s in SIGNS}
    tables = {s: p[0] for s, p in pooled.items()}
    ci = {s: p[1:] for s, p in pooled.items()}
    data = pd.concat([cells_ci(tables[s], *ci[s], "share_pct", sign=SIGNS[s]) for s in SIGNS], ignore_index=True)
    data = data.drop(columns="significant")  # shares are not tested against 0
    spec = specialization(tables["pos"])
    lo, hi = ci["pos"]
    w.shares.setdefault(t.task, {})[name] = {
        f"in_language_{s}{suffix}": values for s in SIGNS for suffix, values in (
            ("", specialization(tables[s]).round(6).to_dict()),
            ("_ci", {l: [round(float(ci[s][0].at[l, l]), 6), round(float(ci[s][1].at[l, l]), 6)] for l in specialization(tables[s]).index}),
        )
    }
    top = (tables["pos"].idxmax(axis=1) == tables["pos"].index).sum()
    caption = (
        f"Share (%) of each training language among the top-{top_k(res)} most positive (left) and most negative "
        f"(right) training examples, {what}, averaged over correctly classified test examples; rows are test "
        f"languages, columns training languages. In-language positive shares: "
        f"{', '.join(f'{l} {v:.1f} [{lo.at[l, l]:.1f}, {hi.at[l, l]:.1f}]' for l, v in spec.items())} "
        f"({ci_method(len(runs), 'training seeds')}; chance "
        f"{100 / len(t.languages):.0f}); the test language is its own largest contributor for {top}/{len(spec)} "
        f"languages.{pooled_note(runs, 'shares')} Paper: {paper}"
    )
    w.heatmap(number, t.task, slug, data, row="test_language", col="train_language", value="share_pct",
              panel="sign", caption=caption, title=f"{t.task}: {name}", xlabel="training language", ylabel="test language")


def fig05(w: FigureWriter, t: TaskResults | list[TaskResults]) -> None:
    """Fig 5: absolute shares of the SFT subnetworks."""
    _absolute(w, t, 5, "sft_shares", "sft+subnet", "for the sparse-fine-tuned model with each test language's subnetwork",
              "after SFT all subnetworks still rely mostly on in-language data in absolute numbers (Fig 5).")


def fig11(w: FigureWriter, t: TaskResults | list[TaskResults]) -> None:
    """Fig 11: absolute shares of the fully fine-tuned full model."""
    _absolute(w, t, 11, "full_shares", "full", "for the fully fine-tuned model without masks",
              "with the full model each test language draws the most on its own language, XNLI least so (Fig 11).")


def fig19(w: FigureWriter, t: TaskResults | list[TaskResults]) -> None:
    """Fig 19: union / intersection of two languages' masks on the SFT model vs the full model."""
    runs = runs_of(t)
    t = runs[0]
    composed = t.variants("sft+union") + t.variants("sft+intersect")
    if not composed:
        return w.skip(19, t.task, "needs influence results of sft+union:A-B or sft+intersect:A-B variants")
    for pair in sorted({v.pair for v in composed}):
        ops = [(v.kind.split("+")[1], v.name) for v in composed if v.pair == pair]
        if "sft+subnet" in t.influence:
            ops.append(("own masks", "sft+subnet"))
        why = next((r for x in runs if (r := missing_reason(x, ["full"] + [name for _, name in ops]))), None)
        if why:
            w.skip(19, t.task, f"pair {pair[0]}-{pair[1]}: {why}")
            continue
        frames, cross = [], []
        for op, name in ops:
            comps = {sign: [compare_shares(x.influence, name, "full", t.languages, sign=sign) for x in runs] for sign in SIGNS}
            delta = record_changes(w, runs, f"{name} vs full", comps)["pos"]
            lo, hi = w.intervals[(t.task, f"{name} vs full")]["pos"]
            delta = delta.loc[[lang for lang in pair if lang in delta.index]]
            frames.append(cells_ci(delta, lo, hi, "delta_pct", mask=op))
            cross.append(f"{op}: " + ", ".join(f"{b} on {a} {delta.at[a, b]:+.1f}" for a, b in (pair, pair[::-1]) if a in delta.index))
        caption = (
            f"Change (percentage points) in each training language's share of the top-{top_k(t.influence['full'])} most "
            f"positive training examples for test languages {pair[0]} and {pair[1]} when the SFT model is tested with "
            f"the union or the intersection of their two masks, compared with the full fine-tuned model. Cross-pair "
            f"changes: {'; '.join(cross)}. Paper: intersecting the masks of pairs that already shared (PAWS-X es-fr, "
            f"MARC de-en) strengthens their sharing; the union does so less (Fig 19).{pooled_note(runs)} "
            f"{CI_NOTE.format(method=ci_method(len(runs), 'training seeds'))}"
        )
        w.heatmap(19, t.task, f"composition_{pair[0]}-{pair[1]}", pd.concat(frames, ignore_index=True),
                  row="test_language", col="train_language", value="delta_pct", panel="mask", diverging=True,
                  caption=caption, mark="significant", title=f"{t.task}: composed masks {pair[0]}+{pair[1]} (SFT) vs full",
                  xlabel="training language", ylabel="test language")
