"""The reports' figures: a quantity against epoch (or N) per group, a quantity per variant, and the learning curves.

Figures are built with ``matplotlib.figure.Figure``, not pyplot: no global figure registry to leak into and no
backend to choose, so the same code draws for ``report.md`` (saved PNGs) and for a notebook (a returned Figure).
"""
from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported on the first figure, not with this module: every command imports the catalog, which imports
# the exercises' analyses, and a command that draws nothing (``--help``, ``--list``, a bad flag) should not pay for it.


@functools.cache
def _figure_class() -> type:
    from matplotlib.figure import Figure as MatplotlibFigure

    class Figure(MatplotlibFigure):
        """A matplotlib Figure that a notebook shows as a PNG when it is a cell's value (a Figure made without
        pyplot has no display of its own)."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
            return buffer.getvalue()

    return Figure


def new_figure(*, figsize: tuple[float, float]) -> "Figure":
    return _figure_class()(figsize=figsize)


def tab10(index: int):
    """The i-th colour of matplotlib's tab10 palette (cycling)."""
    import matplotlib

    return matplotlib.colormaps["tab10"](index % 10)


LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D"]
DPI = 110

# The learning curves: (column of epochs.csv, panel title, scale).
LEARNING_CURVES = (("train_loss", "training loss (noise on)", 1.0), ("val_loss", "validation loss", 1.0),
                   ("val_acc", "validation accuracy (%)", 100.0))


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float]):
    """A figure and its axes for the commands' charts, without pyplot: nothing to close, no backend to choose."""
    fig = new_figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return Path(path)


def curve_plot(frame, *, path: Path, **kwargs) -> Path:
    """``curve_figure`` saved as a PNG at ``path``."""
    return save(curve_figure(frame, **kwargs), path)


def curve_figure(frame, *, x: str, y: str, hue: str, title: str, ylabel: str, xlabel: str | None = None,
                 row: str | None = None, col: str | None = None, style: str | None = None, logx: bool = False,
                 logy: bool = False, sharey: bool | str = "row", xticks: Sequence[float] | None = None,
                 max_bands: int = 6, titles: dict | None = None, panel: tuple[float, float] = (4.6, 3.3)) -> Figure:
    """``y`` against ``x``: one line per ``hue`` (colour) and ``style`` (line style), the mean over seeds with a
    band from the lowest to the highest seed (left out when a panel would hold more than ``max_bands`` lines);
    one panel per ``row`` x ``col`` value (``titles`` renames a panel's heading). The legend lists the colours and,
    when there are several, the line styles apart."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    data = frame.dropna(subset=[y])
    rows = list(dict.fromkeys(data[row])) if row else [None]
    cols = list(dict.fromkeys(data[col])) if col else [None]
    hues = list(dict.fromkeys(data[hue]))
    styles = list(dict.fromkeys(data[style])) if style else [None]
    colours = {h: tab10(i) for i, h in enumerate(hues)}
    dashes = {s: LINESTYLES[i % len(LINESTYLES)] for i, s in enumerate(styles)}
    several_seeds = "seed" in data and data["seed"].nunique() > 1
    bands = several_seeds and len(hues) * len(styles) <= max_bands
    # Curves that coincide (backends that agree, modes with the same results) must stay visible: earlier colours
    # are drawn wider, so later ones lie inside them, and each line style has its own marker (hollow after the first).
    widths = {h: 2.6 - 1.4 * i / max(len(hues) - 1, 1) for i, h in enumerate(hues)}

    def marks(s, shown: bool) -> dict:
        if not shown:
            return {}
        i = styles.index(s)
        return {"marker": MARKERS[i % len(MARKERS)], "markersize": 4 if i == 0 else 6,
                "markerfacecolor": None if i == 0 else "none"}

    fig = new_figure(figsize=(max(7.0, panel[0] * len(cols) + 1.8), panel[1] * len(rows)))
    axes = fig.subplots(len(rows), len(cols), squeeze=False, sharex=True, sharey=sharey)
    for r, row_value in enumerate(rows):
        for c, col_value in enumerate(cols):
            ax = axes[r][c]
            panel = data
            if row:
                panel = panel[panel[row] == row_value]
            if col:
                panel = panel[panel[col] == col_value]
            for h in hues:
                for s in styles:
                    line = panel[panel[hue] == h]
                    if style:
                        line = line[line[style] == s]
                    if line.empty:
                        continue
                    agg = line.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
                    label = f"{h}" + (f" · {s}" if style else "")
                    ax.plot(agg.index, agg["mean"], color=colours[h], linestyle=dashes[s], label=label,
                            linewidth=widths[h], **marks(s, len(agg) <= 12))
                    if bands:
                        ax.fill_between(agg.index, agg["min"], agg["max"], color=colours[h], alpha=0.15, linewidth=0)
            heading = " · ".join(str((titles or {}).get(v, v)) for v in (row_value, col_value) if v is not None)
            if heading:
                ax.set_title(heading, fontsize=9)
            if logx:
                ax.set_xscale("log")
            if logy:
                ax.set_yscale("log")
            if xticks is not None:
                ax.set_xticks(list(xticks), [f"{t:g}" for t in xticks])
                ax.minorticks_off() if not logy else None
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if r == len(rows) - 1:
                ax.set_xlabel(xlabel or x)
            if c == 0:
                ax.set_ylabel(ylabel)
    legend = ("line: mean over seeds; band: lowest to highest seed" if bands else
              "line: mean over seeds" if several_seeds else "one seed")
    fig.suptitle(f"{title}\n({legend})", fontsize=10)
    fig.tight_layout()
    handles = [Line2D([], [], color=colours[h], linewidth=2) for h in hues]
    labels = [str(h) for h in hues]
    if style and len(styles) > 1:  # colours and line styles apart: n + m entries instead of n x m
        handles += [Line2D([], [], color="0.3", linestyle=dashes[s], **marks(s, True)) for s in styles]
        labels += [str(s) for s in styles]
    elif style:
        labels = [f"{h} · {styles[0]}" for h in hues]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, frameon=False,
               ncol=min(len(labels), 8), handlelength=3)
    return fig


def learning_curves(epochs_frame, *, hue: str = "backend", style: str | None = "mode", row: str | None = None,
                    title: str = "learning curves", path: Path | None = None, max_bands: int = 12) -> Figure:
    """Training loss, validation loss and validation accuracy against epoch, a panel each (a row of them per
    ``row`` value): one colour per ``hue`` (the backend), one line style per ``style`` (the mode), the mean over
    seeds with their range as a band. Saved as a PNG too when ``path`` is given."""
    keys = [c for c in dict.fromkeys([hue, style, row, "seed", "epoch"]) if c]
    long = pd.concat([epochs_frame[keys].assign(value=epochs_frame[column].astype(float) * scale, metric=label)
                      for column, label, scale in LEARNING_CURVES], ignore_index=True)
    fig = curve_figure(long, x="epoch", y="value", hue=hue, title=title, ylabel="", col="metric", style=style,
                       row=row, sharey="col", max_bands=max_bands, panel=(3.7, 3.4))
    if path is not None:
        save(fig, path)
    return fig


def points_plot(frame, *, x: str, y: str, hue: str, path: Path, title: str, ylabel: str,
                zero_line: bool = False) -> Path:
    """``y`` per category ``x`` (in order of appearance): every seed as a dot, the mean as a bar with the seeds'
    range; one colour per ``hue``."""
    data = frame.dropna(subset=[y])
    cats = list(dict.fromkeys(data[x]))
    hues = list(dict.fromkeys(data[hue]))
    width = 0.8 / max(len(hues), 1)
    fig = new_figure(figsize=(max(5.0, 1.1 * len(cats) + 2.5), 3.8))
    ax = fig.subplots()
    for i, h in enumerate(hues):
        colour = tab10(i)
        for j, cat in enumerate(cats):
            values = data[(data[hue] == h) & (data[x] == cat)][y].astype(float)
            if values.empty:
                continue
            pos = j + (i - (len(hues) - 1) / 2) * width
            mean = values.mean()
            ax.errorbar([pos], [mean], yerr=[[mean - values.min()], [values.max() - mean]], fmt="s", color=colour,
                        capsize=4, markersize=7, label=h if j == 0 else None)
            ax.scatter(np.full(len(values), pos + width * 0.25), values, color=colour, s=12, alpha=0.6)
    if zero_line:
        ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{title}\n(square: mean over seeds, bar: lowest to highest seed, dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, frameon=False, ncol=min(len(hues), 4))
    return save(fig, path)


def image_link(path: Path, alt: str) -> str:
    return f"![{alt}]({Path(path).name})"
