"""The reports' two kinds of figure: a quantity against epoch (or N) per group, and a quantity per variant."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LINESTYLES = ["-", "--", ":", "-."]


def curve_plot(frame, *, x: str, y: str, hue: str, path: Path, title: str, ylabel: str, xlabel: str | None = None,
               row: str | None = None, col: str | None = None, style: str | None = None, logx: bool = False,
               logy: bool = False, sharey: bool | str = "row", xticks: Sequence[float] | None = None,
               max_bands: int = 6) -> Path:
    """``y`` against ``x``: one line per ``hue`` (colour) and ``style`` (line style), the mean over seeds with a
    band from the lowest to the highest seed (left out when a panel would hold more than ``max_bands`` lines);
    one panel per ``row`` x ``col`` value."""
    data = frame.dropna(subset=[y])
    rows = list(dict.fromkeys(data[row])) if row else [None]
    cols = list(dict.fromkeys(data[col])) if col else [None]
    hues = list(dict.fromkeys(data[hue]))
    styles = list(dict.fromkeys(data[style])) if style else [None]
    colours = {h: plt.cm.tab10(i % 10) for i, h in enumerate(hues)}
    dashes = {s: LINESTYLES[i % len(LINESTYLES)] for i, s in enumerate(styles)}
    bands = len(hues) * len(styles) <= max_bands
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(max(7.0, 4.6 * len(cols) + 1.8), 3.3 * len(rows)),
                             squeeze=False, sharex=True, sharey=sharey)
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
                            marker="o" if len(agg) <= 12 else None, markersize=3)
                    if bands and line["seed"].nunique() > 1:
                        ax.fill_between(agg.index, agg["min"], agg["max"], color=colours[h], alpha=0.15, linewidth=0)
            heading = " · ".join(str(v) for v in (row_value, col_value) if v is not None)
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
    handles, labels = {}, []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    fig.suptitle(f"{title}\n(line: mean over seeds" + ("; band: lowest to highest seed)" if bands else ")"),
                 fontsize=10)
    fig.tight_layout()
    fig.legend([handles[l] for l in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8,
               frameon=False, ncol=min(len(labels), 4))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def points_plot(frame, *, x: str, y: str, hue: str, path: Path, title: str, ylabel: str,
                zero_line: bool = False) -> Path:
    """``y`` per category ``x`` (in order of appearance): every seed as a dot, the mean as a bar with the seeds'
    range; one colour per ``hue``."""
    data = frame.dropna(subset=[y])
    cats = list(dict.fromkeys(data[x]))
    hues = list(dict.fromkeys(data[hue]))
    width = 0.8 / max(len(hues), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cats) + 2.5), 3.8))
    for i, h in enumerate(hues):
        colour = plt.cm.tab10(i % 10)
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
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def image_link(path: Path, alt: str) -> str:
    return f"![{alt}]({Path(path).name})"
