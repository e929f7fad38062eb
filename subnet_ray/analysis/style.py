"""The look of every figure: resolution and formats, readable axis and colorbar names, integer colour
scales for counts, and point labels that do not overlap.

One place so a paper's figures agree with one another; figures.py draws, this module decides how
things are named and sized.
"""
from __future__ import annotations

import numpy as np
from matplotlib.colors import BoundaryNorm
from matplotlib.ticker import MaxNLocator

DPI = 300  # print resolution; the PDF beside each PNG is vector
FORMATS = ("png", "pdf")
FONT = {"tick": 8, "label": 9, "title": 10, "cell": 8, "point": 7, "legend": 8}

# Raw column names -> what an axis or colorbar says.
LABELS = {
    "delta_pct": "change in share, points",
    "cosine_similarity": "cosine similarity",
    "mask_cosine_similarity": "mask cosine similarity",
    "languages_enabling": "languages enabling the head",
    "heads_disabled": "heads disabled",
    "relative_accuracy_pct": "dev accuracy, % of full model",
    "accuracy_pct": "accuracy (%)",
    "share_pct": "share of top-k (%)",
    "test_language": "test language",
    "train_language": "training language",
    "language_a": "language a",
    "language_b": "language b",
    "positive_share_pct": "positive share (%)",
    "negative_share_pct": "negative share (%)",
    "specialization": "in-language share (%)",
    "checkpoint": "epoch checkpoint",
    "r": "correlation r",
}


def label(name: str) -> str:
    """Returns the readable name of a column: LABELS, else underscores as spaces and '_pct' as ' (%)'."""
    if name in LABELS:
        return LABELS[name]
    text = str(name)
    if text.endswith("_pct"):
        text = text[: -len("_pct")] + " (%)"
    return text.replace("_", " ")


def is_count(values: np.ndarray, fmt: str) -> bool:
    """Returns True if a heatmap shows counts: whole numbers printed without decimals."""
    finite = values[np.isfinite(values)]
    return fmt == "{:.0f}" and finite.size > 0 and bool(np.all(finite == np.round(finite)))


def count_scale(cmap, vmin: float, vmax: float):
    """Returns (colormap, norm) with one colour per whole number from vmin to vmax (a count is never 1.5)."""
    lo, hi = int(np.floor(vmin)), int(np.ceil(vmax))
    levels = hi - lo + 1
    return cmap.resampled(levels), BoundaryNorm(np.arange(lo - 0.5, hi + 1.5), levels)


def colorbar(fig, im, ax, value: str, count: bool, text: str | None = None):
    """Returns the colorbar of an image, labelled with what its colour means; whole-number ticks for counts."""
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label(text or label(value), fontsize=FONT["label"])
    bar.ax.tick_params(labelsize=FONT["tick"])
    if count:
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    return bar


def _boxes(texts, renderer) -> list:
    return [t.get_window_extent(renderer).expanded(1.05, 1.1) for t in texts]


def place_labels(ax, xs, ys, texts, offset: tuple[float, float] = (3, 3), rounds: int = 60) -> list:
    """Returns the text artists of point labels placed so that no two overlap.

    Points at the same place share one label ('a, b'); then overlapping labels are pushed apart
    vertically, a little each round, until none overlap (or `rounds` is spent).
    """
    groups: dict[tuple[float, float], list[str]] = {}
    for x, y, t in zip(xs, ys, texts):
        if np.isfinite(x) and np.isfinite(y):
            groups.setdefault((round(float(x), 9), round(float(y), 9)), []).append(str(t))
    artists = [ax.annotate(", ".join(names), (x, y), xytext=offset, textcoords="offset points",
                           fontsize=FONT["point"], in_layout=False) for (x, y), names in groups.items()]
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    for _ in range(rounds):
        boxes = _boxes(artists, renderer)
        moved = False
        for i in range(len(artists)):
            for j in range(i + 1, len(artists)):
                if boxes[i].overlaps(boxes[j]):
                    # the lower label moves down, the upper up, by half their overlap plus a point
                    lower, upper = (i, j) if boxes[i].y0 <= boxes[j].y0 else (j, i)
                    step = (min(boxes[i].y1, boxes[j].y1) - max(boxes[i].y0, boxes[j].y0)) / 2 * 72 / fig.dpi + 1
                    for k, sign in ((lower, -1), (upper, 1)):
                        dx, dy = artists[k].xyann
                        artists[k].xyann = (dx, dy + sign * step)
                    moved = True
                    boxes = _boxes(artists, renderer)
        if not moved:
            break
    return artists


def overlapping(texts, renderer) -> list[tuple[int, int]]:
    """Returns the index pairs of text artists whose boxes overlap (what place_labels avoids)."""
    boxes = [t.get_window_extent(renderer) for t in texts]
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
