"""One writer for every figure: the CSV and the PNG come from the same long-form table.

Each figure is a tidy DataFrame (one row per plotted number, with the columns that place
it: panel, row/column, x/y, hue). The writer saves that table as `<name>.csv`, draws it
(heatmap, scatter, lines or bars) without touching any other data, saves `<name>.png`,
and reads the drawn numbers back from the matplotlib artists into `FigureRecord.plotted`
so tests can check the picture against the CSV. Matplotlib is used through its object
API with the Agg canvas (no pyplot state), so it is safe in workers and tests.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import subnet_ray.analysis.style as style

DIVERGING = "RdBu_r"  # red = more influence / higher, blue = less; white at 0
SEQUENTIAL = "Blues"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


@dataclass
class FigureRecord:
    """One written figure: where its files are, what it shows, and the numbers drawn."""

    figure: int | str  # the paper's figure number, or a word for figures the paper does not have
    task: str
    slug: str
    png: Path
    csv: Path
    caption: str
    plotted: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    """Panel (or 'panel/hue') -> numbers read back from the drawn artists."""
    spec: dict = field(default_factory=dict)
    """How the CSV's columns were drawn: kind ('heatmap' | 'scatter' | 'lines' | 'bars') and column roles."""
    labels: dict[str, list[str]] = field(repr=False, default_factory=dict)
    """Heatmaps: panel -> the text written in each cell, row by row."""

    @property
    def pdf(self) -> Path:
        """Returns the vector copy of the PNG (same stem, .pdf)."""
        return self.png.with_suffix(".pdf")

    @property
    def name(self) -> str:
        """Returns the file stem, e.g. 'fig02_babel_subnet_vs_full'."""
        return self.png.stem


def _order(values: pd.Series) -> list:
    """Returns the distinct values in order of first appearance (the builder's order)."""
    return list(pd.unique(values))


def _label(fmt: str, v: float) -> str:
    """Returns v formatted for a cell, without the '-' of a value that rounds to zero."""
    text = fmt.format(v)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _panels(data: pd.DataFrame, panel: str | None) -> list[tuple[str, pd.DataFrame]]:
    if panel is None:
        return [("main", data)]
    return [(str(p), data[data[panel] == p]) for p in _order(data[panel])]


def _grid(n: int, per_row: int) -> tuple[int, int]:
    """Returns (columns, rows) of a grid of n panels with at most per_row per row."""
    cols = min(n, per_row)
    return cols, math.ceil(n / cols)


def _axes(fig: Figure, n: int, per_row: int = 99, **kw) -> list:
    """Returns n axes in rows of at most per_row; unused grid cells are removed."""
    cols, rows = _grid(n, per_row)
    axes = list(fig.subplots(rows, cols, squeeze=False, **kw).ravel())
    for ax in axes[n:]:
        ax.remove()
    return axes[:n]


class FigureWriter:
    """Writes figures and keeps the list of what was written and what was skipped, and why."""

    def __init__(self, out_dir: str | Path, dpi: int = style.DPI):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dpi = dpi
        self.records: list[FigureRecord] = []
        self.skipped: list[dict] = []
        self.correlations: list[dict] = []  # one dict per correlation: figure, task, what, r, p, n
        self.comparisons: dict[str, dict[str, dict]] = {}  # task -> "a vs b" -> changes per language
        self.shares: dict[str, dict[str, dict]] = {}  # task -> variant -> in-language shares and intervals
        self.intervals: dict[tuple[str, str], dict] = {}  # (task, "a vs b") -> sign -> (low, high) tables of the change

    def skip(self, figure: int | str, task: str, reason: str) -> None:
        """Records that a figure was not made for a task, and why."""
        label = f"fig{figure:02d}" if isinstance(figure, int) else figure
        self.skipped.append({"figure": label, "task": task, "reason": reason})

    def attempt(self, figure: int | str, task: str, make: Callable[[], None]) -> None:
        """Runs one figure builder; bad or inconsistent data skips that figure (with the error) instead of the report."""
        try:
            make()
        except (ValueError, KeyError) as e:
            self.skip(figure, task, f"error: {type(e).__name__}: {e}")

    def correlation(self, figure: int, task: str, what: str, x: str, y: str, corr, **extra) -> None:
        """Records one correlation (a stats.Correlation) for summary.json and the report."""
        self.correlations.append({"figure": f"fig{figure:02d}", "task": task, "what": what, "x": x, "y": y,
                                  **extra, **corr.as_dict()})

    def _save(self, figure: int | str, task: str, slug: str, data: pd.DataFrame, caption: str,
              size: tuple[float, float], draw: Callable[[Figure, pd.DataFrame], dict[str, np.ndarray]],
              title: str | None, spec: dict) -> FigureRecord:
        if data.empty:
            raise ValueError(f"fig{figure:02d} {task} {slug}: nothing to plot")
        # Paper figures are figNN_<task>_<slug>; figures the paper does not have use a word prefix.
        stem = f"fig{figure:02d}_{task}_{slug}" if isinstance(figure, int) else f"{figure}_{task}_{slug}"
        data = data.reset_index(drop=True)
        csv, png = self.out_dir / f"{stem}.csv", self.out_dir / f"{stem}.png"
        data.to_csv(csv, index=False)
        fig = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(fig)
        plotted = draw(fig, data)
        if title:
            # Wrap to the figure's width so long titles are never cut off.
            wrapped = "\n".join(textwrap.fill(line, max(30, int(size[0] * 14))) for line in title.split("\n"))
            fig.suptitle(wrapped, fontsize=style.FONT["title"])
        fig.savefig(png, dpi=self.dpi)
        fig.set_layout_engine("none")  # laid out once for the PNG; the PDF keeps that layout
        fig.savefig(png.with_suffix(".pdf"))
        record = FigureRecord(figure, task, slug, png, csv, caption, plotted, spec)
        self.records.append(record)
        return record

    def heatmap(self, figure: int | str, task: str, slug: str, data: pd.DataFrame, *, row: str, col: str, value: str,
                caption: str, panel: str | None = None, diverging: bool = False, fmt: str = "{:.1f}",
                title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
                shared_scale: bool = True, mark: str | None = None, colorbar_label: str | None = None) -> FigureRecord:
        """Returns the record of a heatmap per panel, cells annotated; diverging maps centred at 0.

        Panels share one colour scale unless `shared_scale` is False (panels in different units).
        `mark` names a bool column: its true cells get a '*' after their value (e.g. a change
        whose 95% interval excludes 0). Counts (whole numbers, fmt '{:.0f}') get one colour per
        number and whole-number colorbar ticks; the colorbar says what its colour means.
        """
        def scale(values: np.ndarray) -> tuple[float, float]:
            finite = values[np.isfinite(values)]
            if diverging:
                m = float(np.abs(finite).max()) if finite.size else 0.0
                return -(m or 1.0), (m or 1.0)
            lo = float(finite.min()) if finite.size else 0.0
            hi = float(finite.max()) if finite.size else 1.0
            return lo, (hi if hi > lo else lo + 1.0)

        import matplotlib

        cmap = matplotlib.colormaps[DIVERGING if diverging else SEQUENTIAL]
        count = style.is_count(data[value].to_numpy(float), fmt)
        shared = scale(data[value].to_numpy(float))
        panels = _panels(data, panel)
        nrows = max(len(_order(d[row])) for _, d in panels)
        ncols = max(len(_order(d[col])) for _, d in panels)
        cell = 0.5 if ncols <= 8 else 0.36
        size = (len(panels) * (cell * ncols + 1.9) + 0.4, cell * nrows + 1.5 + (0.3 if title else 0))
        fontsize = style.FONT["tick"] if ncols <= 8 else style.FONT["tick"] - 2

        labels: dict[str, list[str]] = {}

        def draw(fig: Figure, data: pd.DataFrame) -> dict[str, np.ndarray]:
            out = {}
            for ax, (name, d) in zip(_axes(fig, len(panels)), _panels(data, panel)):
                rows, cols = _order(d[row]), _order(d[col])
                labels[name] = []
                grid = d.pivot(index=row, columns=col, values=value).reindex(index=rows, columns=cols).to_numpy(float)
                marks = (d.pivot(index=row, columns=col, values=mark).reindex(index=rows, columns=cols).fillna(False)
                         .to_numpy(bool) if mark else np.zeros(grid.shape, bool))
                vmin, vmax = shared if shared_scale else scale(grid.ravel())
                if count:
                    cm, norm = style.count_scale(cmap, vmin, vmax)
                    im = ax.imshow(grid, cmap=cm, norm=norm, aspect="auto")
                else:
                    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
                ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=fontsize)
                ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=fontsize)
                ax.set_xlabel(xlabel or style.label(col), fontsize=style.FONT["label"])
                ax.set_ylabel(ylabel or style.label(row), fontsize=style.FONT["label"])
                if panel is not None:
                    ax.set_title(name, fontsize=style.FONT["title"] - 1)
                for (i, j), v in np.ndenumerate(grid):
                    if np.isfinite(v):
                        level = float(im.norm(v)) / (max(im.norm.N - 1, 1) if count else 1)
                        dark = abs(level - (0.5 if diverging else 0.0)) > (0.3 if diverging else 0.6)
                        labels[name].append(_label(fmt, v) + ("*" if marks[i, j] else ""))
                        # Cell labels sit inside the axes: keeping them out of the layout saves most of its cost.
                        ax.text(j, i, labels[name][-1], ha="center", va="center",
                                fontsize=style.FONT["cell"] if ncols <= 8 else style.FONT["cell"] - 2,
                                color="white" if dark else "black", in_layout=False)
                style.colorbar(fig, im, ax, value, count, colorbar_label)
                out[name] = np.ma.filled(np.ma.asarray(im.get_array(), dtype=float), np.nan)
            return out

        spec = {"kind": "heatmap", "row": row, "col": col, "value": value, "panel": panel, "mark": mark}
        record = self._save(figure, task, slug, data, caption, size, draw, title, spec)
        record.labels = labels
        return record

    def scatter(self, figure: int | str, task: str, slug: str, data: pd.DataFrame, *, x: str, y: str, caption: str,
                hue: str | None = None, label: str | None = None, panel: str | None = None,
                panel_titles: dict[str, str] | None = None, title: str | None = None,
                xlabel: str | None = None, ylabel: str | None = None) -> FigureRecord:
        """Returns the record of a scatter per panel (points coloured by hue, labelled, least-squares line)."""
        panels = _panels(data, panel)
        hues = _order(data[hue]) if hue else []
        colour = {h: PALETTE[i % len(PALETTE)] for i, h in enumerate(hues)}
        cols, rows = _grid(len(panels), 3)
        size = (cols * 3.8 + 0.4, rows * 3.4 + (0.4 if title else 0))

        def draw(fig: Figure, data: pd.DataFrame) -> dict[str, np.ndarray]:
            out = {}
            for ax, (name, d) in zip(_axes(fig, len(panels), 3), _panels(data, panel)):
                xs, ys = d[x].to_numpy(float), d[y].to_numpy(float)
                colours = [colour[h] for h in d[hue]] if hue else PALETTE[0]
                points = ax.scatter(xs, ys, c=colours, s=22, zorder=3)
                ok = np.isfinite(xs) & np.isfinite(ys)
                if ok.sum() >= 2 and np.ptp(xs[ok]) > 0:
                    slope, icept = np.polyfit(xs[ok], ys[ok], 1)
                    grid = np.linspace(xs[ok].min(), xs[ok].max(), 2)
                    ax.plot(grid, slope * grid + icept, color="0.4", lw=1, ls="--", zorder=2)
                if hue:
                    handles = [ax.scatter([], [], c=colour[h], s=22, label=str(h)) for h in _order(d[hue])]
                    ax.legend(handles=handles, fontsize=style.FONT["legend"], title=style.label(hue),
                              title_fontsize=style.FONT["legend"])
                ax.margins(0.12)  # room for the point labels
                ax.set_xlabel(xlabel or style.label(x), fontsize=style.FONT["label"])
                ax.set_ylabel(ylabel or style.label(y), fontsize=style.FONT["label"])
                ax.tick_params(labelsize=style.FONT["tick"])
                if label:
                    style.place_labels(ax, xs, ys, d[label])
                ax.set_title(textwrap.fill((panel_titles or {}).get(name, name if panel else ""), 48), fontsize=7)
                out[name] = np.asarray(points.get_offsets(), dtype=float)
            return out

        spec = {"kind": "scatter", "x": x, "y": y, "hue": hue, "panel": panel}
        return self._save(figure, task, slug, data, caption, size, draw, title, spec)

    def lines(self, figure: int | str, task: str, slug: str, data: pd.DataFrame, *, x: str, y: str, hue: str, caption: str,
              panel: str | None = None, title: str | None = None, ylabel: str | None = None,
              hlines: dict[str, float] | None = None, xlabel: str | None = None,
              band: tuple[str, str] | None = None) -> FigureRecord:
        """Returns the record of one line per hue per panel (shared y axis); `hlines` adds labelled reference lines.

        `band` names (low, high) columns drawn as a shaded interval around each line.
        """
        panels = _panels(data, panel)
        colour = {h: PALETTE[i % len(PALETTE)] for i, h in enumerate(_order(data[hue]))}
        cols, rows = _grid(len(panels), 3)
        size = (cols * 3.8 + 0.4, rows * 3.0 + (0.4 if title else 0))
        integer_x = pd.api.types.is_integer_dtype(data[x])

        def draw(fig: Figure, data: pd.DataFrame) -> dict[str, np.ndarray]:
            out = {}
            for ax, (name, d) in zip(_axes(fig, len(panels), 3, sharey=True), _panels(data, panel)):
                if integer_x:
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                for h in _order(d[hue]):
                    dh = d[d[hue] == h]
                    (line,) = ax.plot(dh[x].to_numpy(float), dh[y].to_numpy(float), marker="o", ms=3,
                                      color=colour[h], label=str(h))
                    out[f"{name}/{h}"] = np.asarray(line.get_xydata(), dtype=float)
                    if band:
                        ax.fill_between(dh[x].to_numpy(float), dh[band[0]].to_numpy(float), dh[band[1]].to_numpy(float),
                                        color=colour[h], alpha=0.15, lw=0)
                for text, level in (hlines or {}).items():
                    ax.axhline(level, color="0.5", lw=0.8, ls=":")
                    ax.annotate(text, (ax.get_xlim()[0], level), fontsize=6, color="0.4", va="bottom")
                ax.set_xlabel(xlabel or style.label(x), fontsize=style.FONT["label"])
                ax.set_ylabel(ylabel or style.label(y), fontsize=style.FONT["label"])
                ax.tick_params(labelsize=style.FONT["tick"])
                if panel:
                    ax.set_title(name, fontsize=style.FONT["label"])
                ax.legend(fontsize=style.FONT["legend"] - 1, title=style.label(hue), title_fontsize=style.FONT["legend"] - 1)
            return out

        spec = {"kind": "lines", "x": x, "y": y, "hue": hue, "panel": panel}
        return self._save(figure, task, slug, data, caption, size, draw, title, spec)

    def bars(self, figure: int | str, task: str, slug: str, data: pd.DataFrame, *, x: str, y: str, caption: str,
             hue: str | None = None, title: str | None = None, ylabel: str | None = None) -> FigureRecord:
        """Returns the record of grouped bars (one group per x, one bar per hue), heights in row order."""
        xs = _order(data[x])
        hues = _order(data[hue]) if hue else [None]
        size = (min(9.0, max(3.6, 0.3 * len(xs) * len(hues) + 1.5)), 3.0 + (0.3 if title else 0))

        def draw(fig: Figure, data: pd.DataFrame) -> dict[str, np.ndarray]:
            ax = fig.subplots()
            width = 0.8 / len(hues)
            pos = [xs.index(xv) + (hues.index(hv) - (len(hues) - 1) / 2) * width
                   for xv, hv in zip(data[x], data[hue] if hue else [None] * len(data))]
            colours = [PALETTE[hues.index(hv) % len(PALETTE)] for hv in (data[hue] if hue else [None] * len(data))]
            bars = ax.bar(pos, data[y].to_numpy(float), width=width, color=colours)
            ax.axhline(0, color="0.3", lw=0.8)
            ax.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=7)
            ax.set_xlabel(style.label(x), fontsize=style.FONT["label"])
            ax.set_ylabel(ylabel or style.label(y), fontsize=style.FONT["label"])
            ax.tick_params(labelsize=style.FONT["tick"])
            if hue:
                handles = [ax.bar([0], [0], width=0, color=PALETTE[i % len(PALETTE)], label=str(h)) for i, h in enumerate(hues)]
                ax.legend(handles=handles, fontsize=7)
            return {"main": np.array([b.get_height() for b in bars], dtype=float)}

        spec = {"kind": "bars", "x": x, "y": y, "hue": hue, "panel": None}
        return self._save(figure, task, slug, data, caption, size, draw, title, spec)
