"""The paper's mask figures (8, 9, 12, 13, 16) and the pruning trace, for one task.

Mask similarity is the cosine of the flattened binary masks; overlap % in row a, column b is
the share of a's enabled heads that b also enables. Similarity is set against the
cross-language influence of the subnetworks: the share of training language b among the
top positive (Figs 8, 9) or negative (Fig 16) training examples of test language a != b.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from subnet_ray.analysis.figures import FigureWriter
from subnet_ray.analysis.influence_figures import missing_reason, cells, top_k
from subnet_ray.analysis.results import TaskResults
from subnet_ray.analysis.shares import correct_under_all, language_shares
from subnet_ray.analysis.stats import Correlation, correlate
from subnet_ray.analysis.tables import p_value
from subnet_ray.subnetworks.masks import heads_shared_by, layer_similarity, overlap, similarity_matrix

# SFT subnetworks first: Section 7.2 studies how overlap guides sharing under SFT.
SUBNET_VARIANTS = ("sft+subnet", "full+subnet")


def _mask_languages(w: FigureWriter, t: TaskResults, number: int, minimum: int = 2) -> list[str] | None:
    """Returns the languages that have identified masks, or None (and records the skip) if too few."""
    have = [lang for lang in t.languages if lang in t.masks]
    if len(have) < minimum:
        w.skip(number, t.task, f"needs identified masks of at least {minimum} languages; have {have}")
        return None
    return have


def _masks(t: TaskResults, langs: list[str]) -> dict[str, np.ndarray]:
    """Returns the masks of `langs`, in that order."""
    return {lang: t.masks[lang] for lang in langs}


def _by_pair(table: pd.DataFrame) -> pd.DataFrame:
    """Returns a language x language table with its axes named language_a (rows) and language_b (columns)."""
    return table.rename_axis(index="language_a", columns="language_b")


def _subnet_shares(t: TaskResults, sign: str) -> tuple[str, pd.DataFrame] | None:
    """Returns (variant, absolute shares) of the preferred subnetwork variant, or None."""
    name = next((n for n in SUBNET_VARIANTS if not missing_reason(t, [n])), None)
    if name is None:
        return None
    res = t.influence[name]
    return name, language_shares(res, t.languages, sign=sign, keep=correct_under_all([res]))


def pair_table(x: pd.DataFrame, shares: pd.DataFrame, x_name: str, y_name: str) -> pd.DataFrame:
    """Returns one row per ordered pair (test a, training b != a): pair label, a, b, x[a, b], shares[a, b]."""
    rows = [a for a in shares.index if a in x.index]
    return pd.DataFrame([
        {"pair": f"{b}>{a}", "test_language": a, "train_language": b,
         x_name: float(x.at[a, b]), y_name: float(shares.at[a, b])}
        for a in rows for b in shares.columns if b != a and b in x.columns
    ])


def _corr_text(c: Correlation) -> str:
    def ci(lo_hi: tuple[float, float]) -> str:
        return f" [{lo_hi[0]:+.2f}, {lo_hi[1]:+.2f}]" if np.isfinite(lo_hi[0]) else ""

    return (f"Pearson r={c.pearson_r:.2f}{ci(c.pearson_ci)} ({p_value(c.pearson_p)}), "
            f"Spearman r={c.spearman_r:.2f}{ci(c.spearman_ci)} ({p_value(c.spearman_p)}), n={c.n}; 95% Fisher-z intervals")


def _extremes(table: pd.DataFrame) -> str:
    """Returns the most and least similar distinct pairs of a symmetric language x language table."""
    pairs = {(a, b): table.at[a, b] for i, a in enumerate(table.index) for b in table.columns[i + 1:]}
    hi, lo = max(pairs, key=pairs.get), min(pairs, key=pairs.get)
    return f"most similar {hi[0]}-{hi[1]} ({pairs[hi]:.2f}), least similar {lo[0]}-{lo[1]} ({pairs[lo]:.2f})"


def _mask_vs_influence(w: FigureWriter, t: TaskResults, number: int, sign: str, x: pd.DataFrame, x_name: str,
                       measure: str, slug: str, xlabel: str, against: str, paper: str) -> None:
    """Records the correlation of x[a, b] with b's share of a's top `sign` examples, and plots it per ordered pair."""
    word = {"pos": "positive", "neg": "negative"}[sign]
    what = f"{measure} vs {word} cross-language influence"
    found = _subnet_shares(t, sign)
    if found is None:
        return w.skip(number, t.task, f"{what} needs summed rankings of one of {list(SUBNET_VARIANTS)}")
    name, shares = found
    y_name = f"{word}_share_pct"
    data = pair_table(x, shares, x_name, y_name)
    corr = correlate(data[x_name], data[y_name])
    w.correlation(number, t.task, what, x_name, y_name, corr, variant=name)
    w.scatter(number, t.task, slug, data, x=x_name, y=y_name, hue="test_language", label="pair",
              title=f"{t.task} ({name})\n{_corr_text(corr)}", xlabel=xlabel, ylabel=f"share of b in a's top {word} (%)",
              caption=(f"{word.capitalize()} cross-language influence (share % of training language b among the top-"
                       f"{top_k(t.influence[name])} most {word} examples of test language a, variant {name}; points "
                       f"labelled b>a) against {against}. {_corr_text(corr)}. Paper: {paper}"))


def fig08(w: FigureWriter, t: TaskResults) -> None:
    """Fig 8: mask cosine similarity heatmap, and positive cross-language influence vs similarity."""
    langs = _mask_languages(w, t, 8)
    if langs is None:
        return
    sim = _by_pair(similarity_matrix(_masks(t, langs)))
    w.heatmap(8, t.task, "mask_similarity", cells(sim, "cosine_similarity"), row="language_a", col="language_b",
              value="cosine_similarity", fmt="{:.2f}", title=f"{t.task}: mask cosine similarity",
              xlabel="language", ylabel="language",
              caption=(f"Cosine similarity between the flattened binary head masks of each language pair "
                       f"({t.masks[langs[0]].size} heads): {_extremes(sim)}. Paper: MARC's subnetworks overlap more "
                       "than PAWS-X's on average (Fig 8, left)."))
    _mask_vs_influence(w, t, 8, "pos", sim, "mask_cosine_similarity", "mask cosine similarity",
                       "similarity_vs_positive_influence", "mask cosine similarity of a and b",
                       "the cosine similarity of a's and b's masks",
                       "similarity is positively correlated with positive cross-language influence (Fig 8, right).")


def fig09(w: FigureWriter, t: TaskResults) -> None:
    """Fig 9: per layer, correlation of mask similarity with positive cross-language influence."""
    langs = _mask_languages(w, t, 9, minimum=3)
    if langs is None:
        return
    found = _subnet_shares(t, "pos")
    if found is None:
        return w.skip(9, t.task, f"needs summed rankings of one of {list(SUBNET_VARIANTS)}")
    name, shares = found
    per_layer = layer_similarity(_masks(t, langs))
    # layer_similarity lists each pair once (a before b); pair_table reads both orders.
    per_layer = pd.concat([per_layer, per_layer.rename(columns={"language_a": "language_b", "language_b": "language_a"})])
    rows, undefined = [], []
    for layer in range(t.masks[langs[0]].shape[0]):
        sim = per_layer[per_layer["layer"] == layer].pivot(index="language_a", columns="language_b", values="cosine")
        pairs = pair_table(sim, shares, "layer_cosine_similarity", "positive_share_pct")
        corr = correlate(pairs["layer_cosine_similarity"], pairs["positive_share_pct"])
        w.correlation(9, t.task, f"layer {layer} mask cosine similarity vs positive cross-language influence",
                      "layer_cosine_similarity", "positive_share_pct", corr, variant=name, layer=layer)
        if np.isnan(corr.pearson_r):
            undefined.append(str(layer))
        rows += [{"layer": layer, "method": "Pearson", "r": corr.pearson_r, "ci_low": corr.pearson_ci[0], "ci_high": corr.pearson_ci[1]},
                 {"layer": layer, "method": "Spearman", "r": corr.spearman_r, "ci_low": corr.spearman_ci[0], "ci_high": corr.spearman_ci[1]}]
    data = pd.DataFrame(rows)
    pearson = data[data["method"] == "Pearson"].set_index("layer")["r"]
    best = f"strongest Pearson r at layer {pearson.abs().idxmax()} ({pearson[pearson.abs().idxmax()]:+.2f})" if pearson.notna().any() else "no layer has a defined correlation"
    note = f" Undefined (the layer's masks are identical across languages, or too few pairs) for layers {', '.join(undefined)}." if undefined else ""
    w.bars(9, t.task, "layer_similarity_correlation", data, x="layer", y="r", hue="method", ylabel="correlation r",
           title=f"{t.task} ({name}): per-layer similarity vs positive influence",
           caption=(f"Correlation, over ordered language pairs, between the cosine similarity of two languages' masks "
                    f"restricted to one layer and positive cross-language influence (variant {name}); 95% Fisher-z "
                    f"intervals are in the CSV, p-values and intervals in summary.json. Here the {best}.{note} Paper: similarity in some layers is much more indicative of "
                    "cross-language influence, with the same pattern on PAWS-X and MARC (Fig 9)."))


def fig12(w: FigureWriter, t: TaskResults) -> None:
    """Fig 12: how many languages' masks enable each head."""
    langs = _mask_languages(w, t, 12, minimum=1)
    if langs is None:
        return
    shared = heads_shared_by(_masks(t, langs)).numpy()
    data = pd.DataFrame([{"layer": i, "head": j, "languages_enabling": int(v)} for (i, j), v in np.ndenumerate(shared)])
    counts = {k: int((shared == k).sum()) for k in (0, len(langs))}
    w.heatmap(12, t.task, "heads_shared", data, row="layer", col="head", value="languages_enabling", fmt="{:.0f}",
              xlabel="head", ylabel="layer",
              title=f"{t.task}: heads enabled by k of {len(langs)} languages",
              caption=(f"Number of languages (of {len(langs)}: {', '.join(langs)}) whose identified subnetwork enables "
                       f"each attention head (rows layers, columns heads). {counts[len(langs)]} heads are shared by all, "
                       f"{counts[0]} used by none. Paper: some heads are used by no language, many are shared by all "
                       "(lower layers for PAWS-X, higher for XNLI) (Fig 12)."))


def fig13(w: FigureWriter, t: TaskResults) -> None:
    """Figs 13-15: overlapping enabled heads per language pair, absolute and as % of the row language's heads."""
    langs = _mask_languages(w, t, 13)
    if langs is None:
        return
    counts, pct = map(_by_pair, overlap(_masks(t, langs)))
    counts = counts.astype(float)
    data = pd.concat([cells(pct, "value", panel="% of row language's heads"),
                      cells(counts, "value", panel="shared heads (count)")], ignore_index=True)
    full = [f"{a} in {b}" for a in langs for b in langs if a != b and pct.at[a, b] == 100]
    w.heatmap(13, t.task, "mask_overlap", data, row="language_a", col="language_b", value="value", panel="panel",
              fmt="{:.0f}", title=f"{t.task}: mask overlap", shared_scale=False,
              xlabel="language b", ylabel="language a",
              caption=(f"Left: % of the row language's enabled heads that the column language's mask also enables "
                       f"(asymmetric, as sparsity differs). Right: number of heads both enable (diagonal = heads each "
                       f"enables). Masks fully contained in another: {', '.join(full) or 'none'}. Paper: for XNLI "
                       "German shares 100% of its heads with English but English only 73% with German (Figs 13-15)."))


def fig16(w: FigureWriter, t: TaskResults) -> None:
    """Fig 16: negative cross-language influence vs overlap % of the masks."""
    langs = _mask_languages(w, t, 16)
    if langs is None:
        return
    pct = overlap(_masks(t, langs))[1]
    _mask_vs_influence(w, t, 16, "neg", pct, "overlap_pct", "mask overlap %", "overlap_vs_negative_influence",
                       "% of a's heads also in b's mask", "the % of a's enabled heads that b's mask also enables",
                       "no strong correlation between negative influence and overlap (Fig 16, Section 7.2).")


def pruning_curves(w: FigureWriter, t: TaskResults) -> None:
    """Extra figure: dev accuracy relative to the full model as heads are pruned, per language."""
    curves = t.pruning_curves
    if curves.empty:
        return w.skip("pruning", t.task, "no pruning trace in the results")
    d = curves.assign(language=pd.Categorical(curves["language"], t.languages, ordered=True)).sort_values(["language", "step"])
    data = pd.DataFrame({"language": d["language"].astype(str), "heads_disabled": d["heads_disabled"].astype(int),
                         "relative_accuracy_pct": 100 * d["accuracy"] / d["full_accuracy"]})
    hlines = {}
    if t.threshold is not None:
        paper = " (the paper's)" if t.threshold == 0.95 else " (paper: 95%)"
        hlines[f"threshold {100 * t.threshold:g}%{paper}"] = 100 * t.threshold
    step = f"{100 * t.step_fraction:g}% of all heads" if t.step_fraction is not None else "a fixed fraction of all heads"
    threshold = f"{100 * t.threshold:g}% of the full model's dev accuracy" if t.threshold is not None else "the threshold"
    w.lines("pruning", t.task, "curves", data, x="heads_disabled", y="relative_accuracy_pct", hue="language",
            ylabel="dev accuracy, % of full model", hlines=hlines, xlabel="heads disabled",
            title=f"{t.task}: head pruning", caption=(
                f"Not a paper figure. Dev accuracy of each language (% of the unpruned model's) as heads are pruned "
                f"{step} at a time by Michel et al. importance; the kept subnetwork is the last step at or above "
                f"{threshold} (Section 3.1; paper: 10% steps, 95%)."))


def mask_figures(w: FigureWriter, t: TaskResults) -> None:
    """Makes every mask figure the task's masks and variants allow."""
    for make in (fig08, fig09, fig12, fig13, fig16):
        w.attempt(int(make.__name__[3:]), t.task, lambda: make(w, t))
    w.attempt("pruning", t.task, lambda: pruning_curves(w, t))
    for number, task in ((14, "PAWS-X"), (15, "MARC")):
        w.skip(number, t.task, f"the paper's Fig {number} is Fig 13 for {task}; fig13_<task>_mask_overlap covers every task")


def write_mask_views(folder) -> list:
    """Returns the views written beside each mask.npy under `folder`: mask.png (a small heatmap, layers x
    heads, dark = enabled) and heads.json (the mask as nested 0/1 lists, and the disabled heads as [layer, head])."""
    import json
    from pathlib import Path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    import subnet_ray.analysis.style as style

    written = []
    for npy in sorted(Path(folder).rglob("mask.npy")):
        mask = np.load(npy, allow_pickle=False).astype(bool)
        layers, heads = mask.shape
        view = {"language": npy.parent.name, "layers": layers, "heads": heads,
                "heads_enabled": int(mask.sum()), "heads_disabled": int((~mask).sum()),
                "mask": mask.astype(int).tolist(), "disabled": [[int(i), int(j)] for i, j in zip(*np.nonzero(~mask))]}
        (npy.parent / "heads.json").write_text(json.dumps(view))
        fig = Figure(figsize=(max(1.6, 0.25 * heads + 1.0), max(1.2, 0.25 * layers + 0.8)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.imshow(mask, cmap="Greys", vmin=0, vmax=1.6, aspect="auto")  # enabled dark grey, disabled white
        ax.set_xticks(range(heads), [str(h) for h in range(heads)] if heads <= 16 else [""] * heads, fontsize=6)
        ax.set_yticks(range(layers), [str(i) for i in range(layers)], fontsize=6)
        ax.set_xlabel("head", fontsize=7)
        ax.set_ylabel("layer", fontsize=7)
        ax.set_title(f"{npy.parent.name}: {int(mask.sum())}/{mask.size} heads on", fontsize=7)
        fig.savefig(npy.parent / "mask.png", dpi=style.DPI // 2)
        written += [npy.parent / "heads.json", npy.parent / "mask.png"]
    return written
