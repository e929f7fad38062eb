"""The paper's figures over training (7, 10, 18): specialisation per epoch checkpoint, and against accuracy.

Shares come from each epoch checkpoint's own top-k ranking; Figs 10 and 18 also take one
task's results per training seed (the pooled report), with intervals over the seeds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from subnet_ray.analysis.figures import FigureWriter
from subnet_ray.analysis.influence_figures import ci_method, missing_reason, pooled_note, runs_of, units_of
from subnet_ray.analysis.results import TaskResults
from subnet_ray.analysis.shares import correct_under_all, specialization_by_checkpoint, specialization_interval
from subnet_ray.analysis.stats import correlate


def _epoch_accuracy(t: TaskResults, variant: str) -> pd.DataFrame:
    """Returns language, epoch, accuracy of a variant (test split if it has one, else dev)."""
    acc = t.accuracy[t.accuracy["variant"] == variant]
    split = "test" if (acc["split"] == "test").any() else "dev"
    return acc[acc["split"] == split][["language", "epoch", "accuracy"]].assign(split=split)


def fig07(w: FigureWriter, t: TaskResults) -> None:
    """Fig 7: specialisation vs accuracy over languages x checkpoints, per variant."""
    names = ["full", "full+subnet", "sft+subnet"] + [v.name for v in t.variants("random-sft")]
    frames, titles, reasons = [], {}, []
    for name in names:
        why = missing_reason(t, [name], checkpoint="epochs")
        acc = _epoch_accuracy(t, name)
        if why or acc.empty:
            reasons.append(why or f"variant {name!r} has no per-epoch accuracy")
            continue
        res = t.influence[name]
        spec = specialization_by_checkpoint(res, t.languages, keep=correct_under_all([res]))
        d = spec.merge(acc, left_on=["test_language", "checkpoint"], right_on=["language", "epoch"])
        if d.empty:
            reasons.append(f"variant {name!r}: no checkpoint matches an accuracy epoch")
            continue
        d = pd.DataFrame({"variant": name, "test_language": d["test_language"], "epoch": d["epoch"],
                          "specialization_pct": d["specialization"], "accuracy_pct": 100 * d["accuracy"]})
        corr = correlate(d["specialization_pct"], d["accuracy_pct"])
        w.correlation(7, t.task, "language specialisation vs accuracy over languages x checkpoints",
                      "specialization_pct", "accuracy_pct", corr, variant=name, split=acc["split"].iloc[0])
        lo, hi = corr.pearson_ci
        titles[name] = (f"{name}: Pearson r={corr.pearson_r:.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else "")
                        + f" (p={corr.pearson_p:.2g}), n={corr.n}")
        frames.append(d)
    if not frames:
        return w.skip(7, t.task, "; ".join(reasons))
    caption = (
        "Language specialisation (in-language share of the top positive training examples, from each epoch's "
        "checkpoint ranking) against accuracy at that epoch, one point per test language and epoch, one panel per "
        f"variant; dashed line = least squares. {'; '.join(titles.values())} (95% Fisher-z intervals). Paper: stronger specialisation is "
        "negatively correlated with accuracy on PAWS-X and MARC (Fig 7)."
    )
    w.scatter(7, t.task, "specialization_vs_accuracy", pd.concat(frames, ignore_index=True), x="specialization_pct",
              y="accuracy_pct", hue="test_language", label="epoch", panel="variant", panel_titles=titles,
              caption=caption, title=f"{t.task}: specialisation vs accuracy (points labelled by epoch)",
              xlabel="language specialisation (%)", ylabel="accuracy (%)")


def _per_epoch(t: TaskResults | list[TaskResults], names: list[str]) -> pd.DataFrame:
    """Returns test_language, epoch, specialization_pct averaged over the named variants (and `t`'s runs)."""
    frames, runs, groups, t0 = [], [], [], runs_of(t)[0]
    for i, x in enumerate(runs_of(t)):
        for name in names:
            res = x.influence[name]
            keep = correct_under_all([res])
            runs.append((res, keep))
            groups.append(i)  # a training seed's random-mask seeds share its model: one unit of the interval
            frames.append(specialization_by_checkpoint(res, t0.languages, keep=keep))
    t = t0
    d = pd.concat(frames).groupby(["test_language", "checkpoint"], sort=False)["specialization"].mean().reset_index()
    ci = pd.concat([specialization_interval(runs, t.languages, int(c), groups).assign(checkpoint=int(c)) for c in d["checkpoint"].unique()])
    d = d.merge(ci, on=["test_language", "checkpoint"], how="left")
    d["test_language"] = pd.Categorical(d["test_language"], categories=t.languages, ordered=True)
    d = d.sort_values(["test_language", "checkpoint"])
    return pd.DataFrame({"test_language": d["test_language"].astype(str), "epoch": d["checkpoint"].astype(int),
                         "specialization_pct": d["specialization"], "ci_low": d["low"], "ci_high": d["high"]})


def _spread(d: pd.DataFrame) -> str:
    last = d[d["epoch"] == d["epoch"].max()]
    return ", ".join(f"{r.test_language} {r.specialization_pct:.1f}" for r in last.itertuples())


def _epochs_missing(runs: list[TaskResults], names: list[str]) -> str | None:
    """Returns why some run lacks per-checkpoint rankings of the named variants, or None."""
    return next((r for x in runs if (r := missing_reason(x, names, checkpoint="epochs"))), None)


def fig10(w: FigureWriter, t: TaskResults | list[TaskResults]) -> None:
    """Fig 10 (and the paper's Fig 17 for MARC): specialisation per epoch, full FT vs SFT subnetworks."""
    panels, runs = [], runs_of(t)
    t = runs[0]
    full = next((n for n in ("full+subnet", "full") if not _epochs_missing(runs, [n])), None)
    if full:
        panels.append(("full FT, own mask at test" if full == "full+subnet" else "full FT, no mask", full))
    if not _epochs_missing(runs, ["sft+subnet"]):
        panels.append(("SFT, own mask", "sft+subnet"))
    if not panels:
        return w.skip(10, t.task, "needs per-checkpoint rankings of full+subnet (or full) or sft+subnet")
    frames = [_per_epoch(runs, [name]).assign(model=label)[["model", "test_language", "epoch", "specialization_pct", "ci_low", "ci_high"]]
              for label, name in panels]
    data = pd.concat(frames, ignore_index=True)
    finals = "; ".join(f"{label}: {_spread(d)}" for (label, _), d in zip(panels, frames))
    caption = (
        "Language specialisation (in-language share of the top positive training examples, from each epoch "
        f"checkpoint's own ranking) per test language over training epochs. Last epoch: {finals}. Paper (PAWS-X): both "
        "converge to about 25% in-language reliance, SFT lets all languages share more while full fine-tuning leaves "
        "Korean and English behind; for MARC (Fig 17) full fine-tuning is similar and Chinese is left behind (Fig 10, 17). "
        f"Shaded: {ci_method(len(runs), 'training seeds')}.{pooled_note(runs, 'in-language share')}"
    )
    w.lines(10, t.task, "specialization_epochs", data, x="epoch", y="specialization_pct", hue="test_language",
            panel="model", caption=caption, title=f"{t.task}: specialisation over epochs",
            hlines={"chance": 100 / len(t.languages)}, ylabel="in-language share of top positive (%)", band=("ci_low", "ci_high"))


def fig18(w: FigureWriter, t: TaskResults | list[TaskResults]) -> None:
    """Fig 18: specialisation per epoch of random-mask SFT, mean over seeds."""
    runs = runs_of(t)
    t = runs[0]
    names = [v.name for v in t.variants("random-sft")]
    why = _epochs_missing(runs, names) if names else "needs influence results of random-sft:SEED variants"
    if why:
        return w.skip(18, t.task, why)
    data = _per_epoch(runs, names)
    caption = (
        f"Language specialisation per test language over epochs for SFT with random masks, mean of {len(names)} "
        f"seed(s), from each epoch checkpoint's ranking. Last epoch: {_spread(data)}. Paper (PAWS-X): random-mask SFT "
        f"behaves like full fine-tuning, leaving some languages behind (Fig 18). Shaded: {ci_method(*units_of(runs, names))}"
        f"{' (each seed: the mean of its random-mask seeds)' if len(runs) > 1 else ''}.{pooled_note(runs, 'in-language share')}"
    )
    w.lines(18, t.task, "random_sft_specialization_epochs", data, x="epoch", y="specialization_pct",
            hue="test_language", caption=caption, title=f"{t.task}: random-mask SFT over epochs",
            hlines={"chance": 100 / len(t.languages)}, ylabel="in-language share of top positive (%)", band=("ci_low", "ci_high"))
