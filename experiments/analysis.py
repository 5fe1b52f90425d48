"""Turns a run folder's CSVs into ``report.md`` and PNG plots, written from the numbers by the code.

``write(experiment, folder)`` is called by the CLI after every run. The section's run (``d2l``) gets the side-by-side
table; each exercise has one small function here (``ANALYSES``, named by ``Entry.analysis``) that returns the
report's sections and draws its plots with the shared helpers:

- ``Stat`` / ``stat`` / ``paired``: a value over seeds (mean, sd, n, 95 % t-interval), and B minus A paired by seed;
- ``describe``: the sentence for a difference, with its spread and whether it is beyond the seed noise;
- ``mean_spread_table``: the markdown table of "mean ± sd over seeds" per group;
- ``curve_plot`` (a quantity against epoch or N) and ``points_plot`` (a quantity per variant, seeds as dots).

Differences between variants are paired by seed: with the shared initialisation, variants with the same seed start
from the same weights and see the same batches, so the per-seed difference removes most of the run-to-run noise.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

SETUP = ["backend", "impl", "mode"]
# Two-sided 95 % quantiles of Student's t by degrees of freedom (df > 30 uses 1.96): no SciPy needed.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}
NOISE_RULE = ("Differences are paired by seed (the same seed gives the same initial weights and batch order in "
              "every variant) and given as the mean over seeds, the sd over seeds, and a 95 % t-interval; a difference "
              "is *within the seed noise* when that interval contains 0. Accuracies are in %, differences in "
              "percentage points.")


# ------------------------------------------------------------------------------------------------ numbers over seeds
@dataclass(frozen=True)
class Stat:
    """A quantity over seeds: mean, sample sd and count."""

    mean: float
    sd: float
    n: int
    above: int = 0  # seeds with a value above 0
    below: int = 0  # seeds with a value below 0

    @property
    def half_width(self) -> float:
        """Half-width of the 95 % t-interval of the mean (NaN for fewer than two seeds)."""
        if self.n < 2 or not math.isfinite(self.sd):
            return math.nan
        return _T975.get(self.n - 1, 1.96) * self.sd / math.sqrt(self.n)

    @property
    def clear(self) -> bool:
        """True when the 95 % interval excludes 0: the difference is beyond the seed noise."""
        return self.n >= 2 and math.isfinite(self.half_width) and abs(self.mean) > self.half_width

    def scaled(self, factor: float) -> "Stat":
        above, below = (self.above, self.below) if factor >= 0 else (self.below, self.above)
        return Stat(self.mean * factor, self.sd * abs(factor), self.n, above, below)


def stat(values: Iterable[float]) -> Stat:
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return Stat(math.nan, math.nan, 0)
    return Stat(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v), int((v > 0).sum()),
                int((v < 0).sum()))


def paired(frame, value: str, a: str, b: str, key: str = "variant") -> Stat:
    """``value`` of ``b`` minus that of ``a``, seed by seed, over the seeds both have (one setup's rows)."""
    left = frame[frame[key] == a].groupby("seed")[value].mean()
    right = frame[frame[key] == b].groupby("seed")[value].mean()
    common = left.index.intersection(right.index)
    return stat((right[common] - left[common]).to_numpy())


def fmt_stat(s: Stat, digits: int = 2, signed: bool = False) -> str:
    """``85.29 ± 0.25`` (mean ± sd over seeds), or the bare mean for one seed, or ``-``."""
    if s.n == 0:
        return "-"
    mean = f"{s.mean:+.{digits}f}" if signed else f"{s.mean:.{digits}f}"
    return mean if s.n < 2 else f"{mean} ± {s.sd:.{digits}f}"


def describe(s: Stat, unit: str = "points", digits: int = 2) -> str:
    """A difference in words: its size and sign, its spread over seeds, and whether it is beyond the seed noise."""
    if s.n == 0:
        return "not measured (no finished runs to compare)"
    head = f"{s.mean:+.{digits}f} {unit}"
    if s.n < 2:
        return f"{head} (one seed: no spread to judge)"
    lo, hi = s.mean - s.half_width, s.mean + s.half_width
    verdict = "beyond the seed noise" if s.clear else "within the seed noise"
    signs = f"negative in {s.below}" if s.mean < 0 else f"positive in {s.above}"
    return (f"{head} (sd {s.sd:.{digits}f} over {s.n} seeds, {signs} of them; 95 % CI {lo:+.{digits}f} to "
            f"{hi:+.{digits}f}: {verdict})")


# --------------------------------------------------------------------------------------------------- the run folder
class Run:
    """One run folder read back: the summary, the extra tables, meta.json."""

    def __init__(self, experiment: str, folder: Path) -> None:
        import pandas as pd

        self.experiment, self.folder = experiment, Path(folder)
        self.summary = pd.read_csv(self.folder / "summary.csv")
        meta_path = self.folder / "meta.json"
        self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self.variants = list(dict.fromkeys(self.summary["variant"]))
        self.ok = self._prepare(self.summary[self.summary["status"] == "ok"].copy())
        self.setups = list(dict.fromkeys(self.ok["setup"])) if len(self.ok) else []

    def _prepare(self, frame):
        if len(frame) == 0:
            frame["setup"] = []
            return frame
        several = {col: frame[col].nunique() > 1 for col in ("impl", "mode")}
        frame["setup"] = [
            str(row["backend"]) + "".join(f" {row[c]}" for c in ("impl", "mode") if several[c])
            for _, row in frame.iterrows()]
        return frame

    def table(self, name: str):
        """``<name>.csv`` restricted to finished jobs, with the ``setup`` column; None when absent."""
        import pandas as pd

        path = self.folder / f"{name}.csv"
        if not path.exists():
            return None
        frame = pd.read_csv(path)
        keys = self.ok[SETUP + ["variant", "seed", "setup"]]
        return frame.merge(keys, on=SETUP + ["variant", "seed"], how="inner")

    def rates(self, variant: str) -> tuple[float, ...]:
        row = self.summary[self.summary["variant"] == variant].iloc[0]
        return tuple(float(row[c]) for c in sorted(c for c in self.summary.columns if c.startswith("dropout_")))

    def param(self, variant: str, column: str) -> Any:
        return self.summary[self.summary["variant"] == variant].iloc[0][column]

    def image(self, name: str) -> Path:
        return self.folder / name


def rates_label(rates: Sequence[float]) -> str:
    return "(" + ", ".join(f"{p:g}" for p in rates) + ")"


def markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no finished runs)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Metric:
    column: str
    label: str
    scale: float = 1.0
    digits: int = 2
    signed: bool = False


ACC = Metric("final_val_acc", "test acc %", 100.0)
LOSS = Metric("final_val_loss", "test loss", 1.0, 4)


def mean_spread_table(frame, metrics: Sequence[Metric], by: Sequence[str], labels: dict[str, str] | None = None,
                      formats: dict[str, Callable[[Any], str]] | None = None) -> str:
    """One row per group of ``by`` (in order of appearance): each metric as mean ± sd over the group's seeds."""
    labels, formats = labels or {}, formats or {}
    rows = []
    for keys, group in frame.groupby(list(by), sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = {labels.get(col, col): formats.get(col, str)(key) for col, key in zip(by, keys)}
        for metric in metrics:
            row[metric.label] = fmt_stat(stat(group[metric.column].astype(float) * metric.scale), metric.digits,
                                         metric.signed)
        row["seeds"] = int(group["seed"].nunique())
        rows.append(row)
    return markdown(rows)


def add_paired_delta(frame, value: str, reference: str, out: str, by: Sequence[str] = ("setup",)):
    """A column ``out``: each row's ``value`` minus the reference variant's for the same seed (and ``by`` groups)."""
    ref = frame[frame["variant"] == reference][[*by, "seed", value]].rename(columns={value: "_ref"})
    merged = frame.merge(ref, on=[*by, "seed"], how="left")
    merged[out] = merged[value] - merged["_ref"]
    return merged.drop(columns="_ref")


# ----------------------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LINESTYLES = ["-", "--", ":", "-."]


def curve_plot(frame, *, x: str, y: str, hue: str, path: Path, title: str, ylabel: str, xlabel: str | None = None,
               row: str | None = None, col: str | None = None, style: str | None = None, logx: bool = False,
               logy: bool = False, sharey: bool | str = "row", xticks: Sequence[float] | None = None,
               max_bands: int = 6) -> Path:
    """``y`` against ``x``: one line per ``hue`` (colour) and ``style`` (line style), the mean over seeds with a
    band from the lowest to the highest seed (left out when a panel would hold more than ``max_bands`` lines);
    one panel per ``row`` x ``col`` value."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

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
    plt = _pyplot()
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


# ------------------------------------------------------------------------------------- shared pieces of the reports
def final_accuracy_section(run: Run, reference: str | None, params: Sequence[tuple[str, str]],
                           heading: str = "Final test accuracy") -> list[str]:
    """The table of final accuracy and loss per setup and variant (with the difference to ``reference`` paired
    by seed), the per-variant points plot and the test-accuracy curves."""
    frame = run.ok
    if len(frame) == 0:
        return [f"## {heading}", "", "No job finished; see the runs table below."]
    metrics = [ACC, LOSS]
    if reference is not None and reference in set(frame["variant"]):
        frame = add_paired_delta(frame, "final_val_acc", reference, "delta_acc")
        frame.loc[frame["variant"] == reference, "delta_acc"] = math.nan  # the reference itself: shown as "-"
        metrics.append(Metric("delta_acc", f"Δ acc vs {reference} (points)", 100.0, 2, True))
    labels = {column: label for column, label in params}
    table = mean_spread_table(frame, metrics, ["setup", "variant", *(c for c, _ in params)], labels=labels,
                              formats={c: (lambda v: f"{v:g}" if isinstance(v, float) else str(v))
                                       for c, _ in params})
    epochs = int(frame["epochs"].max())
    plot_frame = frame.assign(acc_pct=frame["final_val_acc"] * 100)
    points = points_plot(plot_frame, x="variant", y="acc_pct", hue="setup", path=run.image("final_accuracy.png"),
                         title=f"{run.experiment}: test accuracy after {epochs} epochs", ylabel="test accuracy (%)")
    epochs_table = run.table("epochs")
    lines = [f"## {heading}", "", f"After {epochs} epochs, on the 10,000 test images (noise off); mean ± sd over "
             "seeds.", "", table, "", image_link(points, "final test accuracy per variant")]
    if "delta_acc" in frame:
        deltas = frame[frame["variant"] != reference].assign(delta_pct=lambda f: f["delta_acc"] * 100)
        delta_plot = points_plot(deltas, x="variant", y="delta_pct", hue="setup", zero_line=True,
                                 path=run.image("difference_to_reference.png"),
                                 title=f"{run.experiment}: test accuracy minus {reference}'s, seed by seed",
                                 ylabel=f"Δ test accuracy vs {reference} (points)")
        lines += ["", image_link(delta_plot, f"difference to {reference} per seed")]
    if epochs_table is not None and len(epochs_table):
        curves = curve_plot(epochs_table.assign(val_acc_pct=epochs_table["val_acc"] * 100), x="epoch",
                            y="val_acc_pct", hue="variant", col="setup" if len(run.setups) > 1 else None,
                            path=run.image("test_accuracy_curves.png"), title=f"{run.experiment}: test accuracy",
                            ylabel="test accuracy (%)")
        lines += ["", image_link(curves, "test accuracy per epoch")]
    return lines


def setup_frames(run: Run, frame=None) -> Iterable[tuple[str, Any]]:
    frame = run.ok if frame is None else frame
    for setup in run.setups:
        yield setup, frame[frame["setup"] == setup]


def _heading(run: Run, setup: str) -> str:
    return f"**{setup}**: " if len(run.setups) > 1 else ""


def findings(paragraphs: list[str]) -> list[str]:
    return ["## What the numbers show", "", NOISE_RULE, "", *[f"- {p}" for p in paragraphs]]


# ---------------------------------------------------------------------------------------------------- the exercises
def dropout_swap(run: Run) -> list[str]:
    """Exercise 1: every (p1, p2) against its swap, and against D2L's (0.5, 0.5) and no dropout."""
    rates = {v: run.rates(v) for v in run.variants}
    reference = next((v for v, r in rates.items() if r == (0.5, 0.5)), run.variants[0])
    sections = final_accuracy_section(run, reference, [("dropout_1", "p1"), ("dropout_2", "p2")])
    text = []
    for setup, frame in setup_frames(run):
        head = _heading(run, setup)
        present = [v for v in run.variants if v in set(frame["variant"])]
        means = {v: stat(frame[frame["variant"] == v]["final_val_acc"] * 100).mean for v in present}
        if not means:
            continue
        best, worst = max(means, key=means.get), min(means, key=means.get)
        text.append(f"{head}highest mean test accuracy: {rates_label(rates[best])} at {means[best]:.2f} %; lowest: "
                    f"{rates_label(rates[worst])} at {means[worst]:.2f} %.")
        second_wins, clear_wins, pairs = 0, 0, 0
        for v in present:
            r = rates[v]
            if len(r) != 2 or not r[0] < r[1]:
                continue
            swapped = next((w for w in present if rates[w] == (r[1], r[0])), None)
            if swapped is None:
                continue
            s = paired(frame, "final_val_acc", v, swapped).scaled(100)
            pairs += 1
            second_wins += s.mean < 0
            clear_wins += s.mean < 0 and s.clear
            text.append(f"{head}swapping {rates_label(r)} to {rates_label(rates[swapped])} (the larger rate moves to "
                        f"the first hidden layer) changes test accuracy by {describe(s)}.")
        if pairs:
            text.append(f"{head}in {second_wins} of {pairs} swap pairs the larger rate on the *second* layer gives "
                        f"the higher mean accuracy ({clear_wins} of them beyond the seed noise).")
        none = next((v for v in present if all(p == 0 for p in rates[v])), None)
        if none is not None and reference in present and none != reference:
            s = paired(frame, "final_val_acc", none, reference).scaled(100)
            text.append(f"{head}D2L's {rates_label(rates[reference])} against no dropout: {describe(s)}.")
    return sections + [""] + findings(text)


def long_training(run: Run) -> list[str]:
    """Exercise 2: curves over many epochs, with the generalisation gap measured on a noise-off training subset."""
    epochs, train_eval = run.table("epochs"), run.table("train_eval")
    if epochs is None or train_eval is None or len(epochs) == 0:
        return ["No finished epochs to report."]
    keys = SETUP + ["setup", "variant", "seed", "epoch"]
    frame = epochs.merge(train_eval[keys + ["train_eval_loss", "train_eval_acc", "train_eval_examples"]],
                         on=keys, how="left")
    frame["gap_acc"] = frame["train_eval_acc"] - frame["val_acc"]
    frame["gap_loss"] = frame["val_loss"] - frame["train_eval_loss"]
    frame["noise_bias"] = frame["train_eval_acc"] - frame["train_acc"]
    last = int(frame["epoch"].max())
    n_sub = int(train_eval["train_eval_examples"].max())
    shown = sorted({e for e in (1, 2, 5, 10, 20, 30, 40, 50, 75, 100, last) if e <= last})
    pct = 100.0
    per_epoch = mean_spread_table(
        frame[frame["epoch"].isin(shown)],
        [Metric("val_acc", "test acc %", pct), Metric("train_eval_acc", "train acc % (noise off)", pct),
         Metric("gap_acc", "gap (points)", pct, 2, True), Metric("gap_loss", "loss gap", 1.0, 4, True),
         Metric("train_acc", "train acc % (noise on)", pct)],
        ["setup", "variant", "epoch"])
    peaks = []
    for (setup, variant, seed), g in frame.groupby(["setup", "variant", "seed"], sort=False):
        best = g.loc[g["val_acc"].idxmax()]
        lowest = g.loc[g["val_loss"].idxmin()]
        peaks.append({"setup": setup, "variant": variant, "seed": seed, "peak_acc": best["val_acc"],
                      "peak_epoch": best["epoch"], "min_loss_epoch": lowest["epoch"],
                      "final_minus_peak": g[g["epoch"] == g["epoch"].max()]["val_acc"].iloc[0] - best["val_acc"]})
    import pandas as pd

    peaks = pd.DataFrame(peaks)
    peak_table = mean_spread_table(peaks, [Metric("peak_acc", "best test acc %", pct),
                                           Metric("peak_epoch", "epoch of best acc", 1.0, 1),
                                           Metric("min_loss_epoch", "epoch of lowest test loss", 1.0, 1),
                                           Metric("final_minus_peak", "last minus best (points)", pct, 2, True)],
                                   ["setup", "variant"])
    long = []
    for column, metric, curve in (("train_eval_acc", "accuracy (%)", "train, noise off"),
                                  ("val_acc", "accuracy (%)", "test"),
                                  ("train_acc", "accuracy (%)", "train, trainer's running mean (noise on)"),
                                  ("train_eval_loss", "loss", "train, noise off"), ("val_loss", "loss", "test"),
                                  ("train_loss", "loss", "train, trainer's running mean (noise on)")):
        part = frame[["setup", "variant", "seed", "epoch", column]].rename(columns={column: "value"})
        part["value"] = part["value"] * (pct if metric.startswith("accuracy") else 1.0)
        long.append(part.assign(metric=metric, curve=curve))
    long = pd.concat(long, ignore_index=True)
    multi = len(run.setups) > 1
    if multi:
        long["variant"] = long["setup"] + " · " + long["variant"]
    curves = curve_plot(long, x="epoch", y="value", hue="curve", row="metric", col="variant",
                        path=run.image("curves.png"),
                        title=f"{run.experiment}: training and test curves", ylabel="", sharey="row")
    gaps = []
    for column, label, scale in (("gap_acc", "accuracy gap (points): train (noise off) − test", pct),
                                 ("gap_loss", "loss gap: test − train (noise off)", 1.0)):
        part = frame[["setup", "variant", "seed", "epoch", column]].rename(columns={column: "value"})
        gaps.append(part.assign(value=part["value"] * scale, metric=label))
    gap_plot = curve_plot(pd.concat(gaps, ignore_index=True), x="epoch", y="value", hue="variant", col="metric",
                          row="setup" if multi else None, path=run.image("generalisation_gap.png"),
                          title=f"{run.experiment}: generalisation gap per epoch", ylabel="gap", sharey=False)
    text = []
    for setup, f in setup_frames(run, frame):
        head = _heading(run, setup)
        rates = {v: run.rates(v) for v in dict.fromkeys(f["variant"])}
        noisy = [v for v, r in rates.items() if any(p > 0 for p in r)]
        clean = [v for v, r in rates.items() if all(p == 0 for p in r)]
        if not noisy or not clean:
            continue
        d, n = noisy[0], clean[0]
        at = lambda e: f[f["epoch"] == e]  # noqa: E731
        s = paired(at(last), "val_acc", n, d).scaled(pct)
        text.append(f"{head}after {last} epochs, {d} minus {n} test accuracy: {describe(s)}.")
        if last > 10:
            s10 = paired(at(10), "val_acc", n, d).scaled(pct)
            text.append(f"{head}at epoch 10 (D2L's length) the same difference was {describe(s10)}.")
        means = f.groupby(["variant", "epoch"])["val_acc"].mean().unstack(0)
        since = ahead_from(means[d] - means[n])
        text.append(f"{head}{d}'s mean test accuracy is above {n}'s at every epoch from epoch {since} on."
                    if since is not None else f"{head}{d}'s mean test accuracy is not above {n}'s at the last epoch.")
        for v in (d, n):
            g = f[f["variant"] == v]
            first, end = stat(g[g["epoch"] == 1]["gap_acc"] * pct), stat(g[g["epoch"] == last]["gap_acc"] * pct)
            text.append(f"{head}{v}: generalisation gap (accuracy on {n_sub:,} training images, noise off, minus "
                        f"test accuracy) {fmt_stat(first)} points after epoch 1, {fmt_stat(end)} after epoch {last}.")
        sg = paired(at(last), "gap_acc", n, d).scaled(pct)
        text.append(f"{head}at epoch {last}, {d}'s gap minus {n}'s: {describe(sg)}.")
        bias = stat(at(last)[at(last)["variant"] == d]["noise_bias"] * pct)
        text.append(f"{head}the trainer's train accuracy (noise on, averaged while the weights move) is "
                    f"{fmt_stat(bias)} points below the noise-off train accuracy for {d} at epoch {last}; a gap "
                    f"taken from it would be off by that much, hence `train_eval.csv`.")
        pk = peaks[(peaks["setup"] == setup)]
        text.append(f"{head}best-epoch test accuracy (each run's maximum over epochs), {d} minus {n}: "
                    f"{describe(paired(pk, 'peak_acc', n, d).scaled(pct))}.")
        for v in (d, n):
            g = pk[pk["variant"] == v]
            text.append(f"{head}{v}: best test accuracy {fmt_stat(stat(g['peak_acc'] * pct))} % at epoch "
                        f"{fmt_stat(stat(g['peak_epoch']), 1)}; the last epoch is "
                        f"{fmt_stat(stat(g['final_minus_peak'] * pct), 2, True)} points from it.")
    return (["## Curves", "", f"`train_eval.csv`: the first {n_sub:,} training images evaluated with the noise off "
             "after every epoch (the gap is defined on these); the trainer's own `train_acc`/`train_loss` "
             "(noise on, averaged over the epoch while the weights move) are drawn for comparison.", "",
             image_link(curves, "training and test curves"), "",
             image_link(gap_plot, "generalisation gap per epoch"), "", "## Per epoch", "", per_epoch, "",
             "## Best epoch", "", peak_table, ""] + findings(text))


def ahead_from(difference) -> int | None:
    """The first epoch from which ``difference`` (a Series indexed by epoch) stays above 0 to the end; None if it
    is not above 0 at the end."""
    since = None
    for epoch, value in sorted(difference.items(), reverse=True):
        if not value > 0:
            break
        since = int(epoch)
    return since


def predicted_post_var(noise: str, p: float, var: float, mean: float) -> float:
    """The variance after the noise, from the pre-noise (pooled) variance and mean, for one hidden layer.

    Dropout keeps h/(1-p) with probability 1-p: E = mean, E[x^2] = (var + mean^2)/(1-p). Gaussian multiplicative
    noise with variance p/(1-p) has the same first two moments. Additive noise of std p adds p^2. DropConnect
    leaves the activations alone (its noise is on the next layer's weights)."""
    if noise in ("dropout", "gaussian"):
        return math.inf if p >= 1 else (var + mean * mean) / (1.0 - p) - mean * mean
    if noise == "additive":
        return var + p * p
    return var


def _activation_frame(run: Run):
    acts = run.table("activations")
    if acts is None or len(acts) == 0:
        return None
    acts = acts.copy()
    acts["rms"] = np.sqrt(acts["mean_sq"])
    return acts


def activation_variance(run: Run) -> list[str]:
    """Exercise 3: per-layer activation variance before/after the noise, train and eval mode, per epoch."""
    acts = _activation_frame(run)
    if acts is None:
        return ["No activation records (activations.csv) to report."]
    last = int(acts["epoch"].max())
    wide = acts.pivot_table(index=["setup", "variant", "seed", "epoch", "layer", "forward_mode"], columns="stage",
                            values=["var", "mean"]).reset_index()
    wide.columns = ["_".join(c for c in col if c) for col in wide.columns]
    wide["ratio"] = wide["var_post_noise"] / wide["var_pre_noise"]
    wide["predicted_ratio"] = [
        (predicted_post_var(str(run.param(r.variant, "noise")), run.rates(r.variant)[int(r.layer) - 1],
                            r.var_pre_noise, r.mean_pre_noise) if r.forward_mode == "train" else r.var_pre_noise)
        / r.var_pre_noise for r in wide.itertuples()]
    tables = []
    for epoch in sorted({0, last}):
        part = wide[wide["epoch"] == epoch]
        tables += [f"### Epoch {epoch}" + (" (before training)" if epoch == 0 else ""), "", mean_spread_table(
            part, [Metric("var_pre_noise", "var before noise", 1.0, 4), Metric("var_post_noise", "var after noise",
                                                                              1.0, 4),
                   Metric("ratio", "after / before", 1.0, 3), Metric("predicted_ratio", "predicted after / before",
                                                                     1.0, 3)],
            ["setup", "variant", "layer", "forward_mode"], labels={"forward_mode": "forward"}), ""]
    plot_frame = acts.assign(layer_label="hidden layer " + acts["layer"].astype(str),
                             panel=acts["forward_mode"].map({"train": "training mode (noise on)",
                                                             "eval": "eval mode (noise off)"}),
                             stage_label=acts["stage"].map({"pre_noise": "before noise", "post_noise": "after noise"}))
    if len(run.setups) > 1:  # one row per backend and layer, so that many backends stay readable
        plot_frame["layer_label"] = plot_frame["setup"] + " · " + plot_frame["layer_label"]
    plot = curve_plot(plot_frame, x="epoch", y="var", hue="variant", style="stage_label", row="layer_label",
                      col="panel", path=run.image("activation_variance.png"), logy=True,
                      title=f"{run.experiment}: variance of hidden activations on {int(acts['probe_examples'].max())} "
                            "test images", ylabel="variance (log scale)")
    text = []
    evals = wide[wide["forward_mode"] == "eval"]
    if len(evals):
        worst = float(np.nanmax(np.abs(evals["ratio"] - 1.0)))
        text.append(f"eval mode: the variance after the noise layer equals the variance before it in every record "
                    f"(largest relative difference {worst:.2g}): the noise is off at test time.")
    for setup, f in setup_frames(run, wide):
        head = _heading(run, setup)
        train_end = f[(f["forward_mode"] == "train") & (f["epoch"] == last)]
        for variant in dict.fromkeys(f["variant"]):
            rates = run.rates(variant)
            if all(p == 0 for p in rates):
                continue
            for layer in sorted(set(train_end["layer"])):
                g = train_end[(train_end["variant"] == variant) & (train_end["layer"] == layer)]
                text.append(f"{head}{variant}, hidden layer {layer}, training mode, epoch {last}: the noise "
                            f"(p = {rates[layer - 1]:g}) multiplies the variance by {fmt_stat(stat(g['ratio']), 3)} "
                            f"(predicted from the measured pre-noise mean and variance: "
                            f"{fmt_stat(stat(g['predicted_ratio']), 3)}).")
        eval_frame = f[f["forward_mode"] == "eval"]
        clean = [v for v in dict.fromkeys(f["variant"]) if all(p == 0 for p in run.rates(v))]
        noisy = [v for v in dict.fromkeys(f["variant"]) if v not in clean]
        if clean and noisy:
            d, n = noisy[0], clean[0]
            for layer in sorted(set(eval_frame["layer"])):
                at_layer = eval_frame[eval_frame["layer"] == layer]
                ratios = []
                for seed in sorted(set(at_layer["seed"])):
                    sel = at_layer[(at_layer["seed"] == seed) & (at_layer["epoch"] == last)]
                    a, b = sel[sel["variant"] == d]["var_pre_noise"], sel[sel["variant"] == n]["var_pre_noise"]
                    if len(a) and len(b):
                        ratios.append(float(a.iloc[0] / b.iloc[0]))
                start = {v: stat(at_layer[(at_layer["variant"] == v) & (at_layer["epoch"] == 0)]["var_pre_noise"])
                         for v in (d, n)}
                end = {v: stat(at_layer[(at_layer["variant"] == v) & (at_layer["epoch"] == last)]["var_pre_noise"])
                       for v in (d, n)}
                peak = {v: at_layer[at_layer["variant"] == v].groupby("epoch")["var_pre_noise"].mean().idxmax()
                        for v in (d, n)}
                text.append(f"{head}hidden layer {layer} (eval mode, the activations the trained weights produce): "
                            f"variance {fmt_stat(start[d], 4)} → {fmt_stat(end[d], 4)} with {d}, "
                            f"{fmt_stat(start[n], 4)} → {fmt_stat(end[n], 4)} with {n} from epoch 0 to {last} "
                            f"(highest at epoch {peak[d]} with {d}, {peak[n]} with {n}); at epoch {last} {d}'s is "
                            f"{fmt_stat(stat(ratios), 2)} × {n}'s.")
            train_frame = f[(f["forward_mode"] == "train") & (f["epoch"] == last) & (f["variant"] == d)]
            for layer in sorted(set(train_frame["layer"]) - {1}):
                shift = []
                for seed in sorted(set(train_frame["seed"])):
                    tr = train_frame[(train_frame["seed"] == seed) & (train_frame["layer"] == layer)]
                    ev = eval_frame[(eval_frame["seed"] == seed) & (eval_frame["layer"] == layer)
                                    & (eval_frame["epoch"] == last) & (eval_frame["variant"] == d)]
                    if len(tr) and len(ev):
                        shift.append(float(tr["var_pre_noise"].iloc[0] / ev["var_pre_noise"].iloc[0]))
                text.append(f"{head}{d}, hidden layer {layer}, epoch {last}: the variance of its activations "
                            f"*before* its own noise, in training mode, is {fmt_stat(stat(shift), 3)} × its eval-mode "
                            f"value: the noise of the layers below reaches it, so training and test see different "
                            f"statistics.")
    return (["## Variance per layer and epoch", "",
             "Pooled variance of all elements (images × units) of each hidden layer's activations on the probe batch "
             "(`activations.csv`, which also holds the mean, the per-unit variance and the zero fraction). Training "
             "mode is one stochastic pass of the backend's own noise; before/after = the ReLU output and what the "
             "next layer reads; where they are equal (eval mode, no dropout) the dashed line lies under the solid "
             "one.", "", image_link(plot, "activation variance per layer per epoch"), "", *tables]
            + findings(text))


def test_time_dropout(run: Run) -> list[str]:
    """Exercise 4: noise off vs one stochastic pass vs Monte-Carlo averages of N passes, and their spread."""
    import pandas as pd

    tt, spread = run.table("test_time"), run.table("test_time_spread")
    if tt is None or len(tt) == 0:
        return ["No test-time records (test_time.csv) to report."]
    tt = tt.copy()
    tt["label"] = [("noise off" if m == "noise off" else "single pass (mean of passes)" if m == "single pass"
                    else f"MC average of {n}") for m, n in zip(tt["method"], tt["n_passes"])]
    table = mean_spread_table(tt, [Metric("acc", "test acc %", 100.0), Metric("loss", "test loss (NLL)", 1.0, 4)],
                              ["setup", "variant", "label"], labels={"label": "prediction"})
    lines = ["## Accuracy with the noise off, on, and averaged", "",
             "After the last epoch, on the 10,000 test images. *MC average of N*: the softmax probabilities of N "
             "stochastic passes averaged, then the arg max (the first N of the same passes for every N); *single "
             "pass*: each pass on its own, averaged over the passes.", "", table, ""]
    passes = sorted(int(n) for n in set(tt[tt["method"] == "mc average"]["n_passes"]))
    curve_rows = []
    for method, label in (("mc average", "MC average of N passes"), ("noise off", "noise off"),
                          ("single pass", "single pass")):
        part = tt[tt["method"] == method]
        if method == "mc average":
            curve_rows.append(part.assign(N=part["n_passes"], series=label))
        else:
            curve_rows += [part.assign(N=n, series=label) for n in passes]
    curve = pd.concat(curve_rows, ignore_index=True)
    curve["acc_pct"] = curve["acc"] * 100
    curve["run"] = curve["setup"] + " · " + curve["variant"]
    several = curve["run"].nunique() > 1
    off = tt[tt["method"] == "noise off"][["setup", "variant", "seed", "acc"]].rename(columns={"acc": "off_acc"})
    curve = curve.merge(off, on=["setup", "variant", "seed"], how="left")
    long = pd.concat([curve.assign(value=curve["acc_pct"], metric="test accuracy (%)"),
                      curve.assign(value=(curve["acc"] - curve["off_acc"]) * 100,
                                   metric="test accuracy minus noise off, same run (points)"),
                      curve.assign(value=curve["loss"], metric="test loss (NLL)")], ignore_index=True)
    plot = curve_plot(long, x="N", y="value", hue="series", style="run" if several else None, col="metric",
                      logx=True, xticks=passes,
                      path=run.image("test_time_accuracy.png"), sharey=False,
                      title=f"{run.experiment}: test accuracy vs number of stochastic passes averaged",
                      ylabel="", xlabel="N (stochastic passes averaged)")
    lines += [image_link(plot, "test accuracy against N"), ""]
    if spread is not None and len(spread):
        k = int(spread["n_passes"].max())
        lines += ["## How much a prediction moves between passes", "", mean_spread_table(spread, [
            Metric("flip_rate", "changes class, pass to next pass (%)", 100.0),
            Metric("unstable_fraction", f"not the same class in all {k} passes (%)", 100.0),
            Metric("mean_prob_std", "sd of the predicted class's probability", 1.0, 4),
            Metric("single_vs_noise_off", "single pass ≠ noise off (%)", 100.0),
            Metric("mc_vs_noise_off", f"MC-{k} ≠ noise off (%)", 100.0)], ["setup", "variant"]), ""]
    text = []
    for setup, f in setup_frames(run, tt):
        head = _heading(run, setup)
        for variant in dict.fromkeys(f["variant"]):
            g = f[f["variant"] == variant]
            off = g[g["method"] == "noise off"][["seed", "acc"]].rename(columns={"acc": "off"})

            def diff(method, n):
                part = g[(g["method"] == method) & (g["n_passes"] == n)]
                merged = part[["seed", "acc"]].merge(off, on="seed")
                return stat((merged["acc"] - merged["off"]) * 100)

            off_acc = stat(off["off"] * 100)
            text.append(f"{head}{variant}: noise off {fmt_stat(off_acc)} %; a single stochastic pass (each "
                        f"pass's accuracy, averaged over the passes) changes test accuracy by "
                        f"{describe(diff('single pass', 1))}.")
            text.append(f"{head}averaging N passes (N forward passes of cost), minus noise off: "
                        + "; ".join(f"N = {n}: {fmt_stat(diff('mc average', n), 2, True)}" for n in passes[:-1])
                        + f"; N = {passes[-1]}: {describe(diff('mc average', passes[-1]))}.")
            mc_means = {n: g[(g["method"] == "mc average") & (g["n_passes"] == n)]["acc"].mean() * 100
                        for n in passes}
            within = [n for n in passes if mc_means[n] >= off_acc.mean - 0.1]
            text.append(f"{head}smallest N whose mean MC accuracy is within 0.1 points of noise off (or above): "
                        + (f"{within[0]}." if within else f"none up to {passes[-1]}."))
            if spread is not None and len(spread):
                sp = spread[(spread["setup"] == setup) & (spread["variant"] == variant)]
                text.append(f"{head}from one pass to the next, {fmt_stat(stat(sp['flip_rate'] * 100))} % of the test "
                            f"images change predicted class; {fmt_stat(stat(sp['unstable_fraction'] * 100))} % are not "
                            f"predicted the same in all {int(sp['n_passes'].max())} passes; a single pass disagrees "
                            f"with the noise-off prediction on {fmt_stat(stat(sp['single_vs_noise_off'] * 100))} %.")
    return lines + findings(text)


def dropout_vs_weight_decay(run: Run) -> list[str]:
    """Exercise 5: effects of dropout, weight decay and both, against none; additivity per weight decay."""
    from experiments.spec import TrainSpec

    import pandas as pd

    def kind(v):
        drop = any(p > 0 for p in run.rates(v))
        wd = float(run.param(v, "weight_decay"))
        return drop, wd

    kinds = {v: kind(v) for v in run.variants}
    none = next((v for v, (d, w) in kinds.items() if not d and w == 0), None)
    dropout = next((v for v, (d, w) in kinds.items() if d and w == 0), None)
    sections = final_accuracy_section(run, none, [("dropout_1", "p1"), ("dropout_2", "p2"),
                                                  ("weight_decay", "weight decay")])
    definition = " ".join((TrainSpec.__doc__ or "").split("\n\n")[-1].split())
    sections = [f"Weight decay is the harness's own, not a framework's optimizer option. From `TrainSpec`: "
                f"\"{definition}\" The parity ladder checks it step by step against the NumPy oracle (rung 4 with "
                "weight decay) in every backend.", ""] + sections
    strengths = sorted({w for d, w in kinds.values() if w > 0})
    text, rows, plot_rows = [], [], []
    for setup, f in setup_frames(run):
        head = _heading(run, setup)
        if none is None or dropout is None:
            continue
        acc = f.pivot_table(index="seed", columns="variant", values="final_val_acc") * 100
        if none not in acc or dropout not in acc:
            continue
        e_d = acc[dropout] - acc[none]
        text.append(ranking(head, f))
        text.append(f"{head}dropout alone changes test accuracy by {describe(stat(e_d))} against none.")
        for wd in strengths:
            wd_only = next((v for v, k in kinds.items() if k == (False, wd)), None)
            both = next((v for v, k in kinds.items() if k == (True, wd)), None)
            if wd_only not in acc or both not in acc:
                continue
            e_w, e_b = acc[wd_only] - acc[none], acc[both] - acc[none]
            inter = e_b - (e_d + e_w)
            best_single = pd.concat([e_d, e_w], axis=1).mean().max()
            vs_best = e_b - (e_d if e_d.mean() >= e_w.mean() else e_w)
            s_i = stat(inter)
            rows.append({"setup": setup, "weight decay": f"{wd:g}", "effect dropout": fmt_stat(stat(e_d), 2, True),
                         "effect wd": fmt_stat(stat(e_w), 2, True), "sum": fmt_stat(stat(e_d + e_w), 2, True),
                         "effect both": fmt_stat(stat(e_b), 2, True), "both − sum": fmt_stat(s_i, 2, True),
                         "both − better single": fmt_stat(stat(vs_best), 2, True)})
            for seed in acc.index:
                plot_rows += [{"setup": setup, "weight decay": f"wd {wd:g}", "seed": seed,
                               "series": "dropout + wd, measured", "effect": e_b[seed]},
                              {"setup": setup, "weight decay": f"wd {wd:g}", "seed": seed,
                               "series": "effect(dropout) + effect(wd)", "effect": e_d[seed] + e_w[seed]}]
            if not s_i.clear:
                shape = "consistent with additive effects"
            elif s_i.mean < 0:
                shape = "less than additive (diminishing returns)"
            else:
                shape = "more than additive"
            better = ("better than" if stat(vs_best).clear and vs_best.mean() > 0 else
                      "worse than" if stat(vs_best).clear and vs_best.mean() < 0 else "not distinguishable from")
            text.append(f"{head}weight decay {wd:g} alone: {describe(stat(e_w))}. Dropout and this weight decay "
                        f"together: {describe(stat(e_b))}. Together minus the sum of the separate effects: "
                        f"{describe(s_i)}, i.e. {shape}. Together minus the better single regulariser (whose effect "
                        f"is {best_single:+.2f} points): {describe(stat(vs_best))}, i.e. {better} it.")
    sections += ["", "## Are the effects additive?", "",
                 f"Effects are test-accuracy differences to `{none}` (points), per seed; *both − sum* is the "
                 "interaction: 0 means additive, below 0 diminishing returns.", "", markdown(rows)]
    if plot_rows:
        frame = pd.DataFrame(plot_rows)
        frame["hue"] = frame["series"] if len(run.setups) == 1 else frame["setup"] + " · " + frame["series"]
        plot = points_plot(frame, x="weight decay", y="effect", hue="hue", path=run.image("additivity.png"),
                           zero_line=True, title=f"{run.experiment}: effect of both vs the sum of the effects",
                           ylabel=f"test accuracy − {none} (points)")
        sections += ["", image_link(plot, "additivity of dropout and weight decay")]
    return sections + [""] + findings(text)


def ranking(head: str, frame) -> str:
    """The variants ordered by mean final test accuracy."""
    means = frame.groupby("variant", sort=False)["final_val_acc"].mean().mul(100).sort_values(ascending=False)
    return f"{head}ranking by mean test accuracy: " + ", ".join(f"{v} {m:.2f} %" for v, m in means.items()) + "."


def _matched_comparisons(run: Run, pairs: list[tuple[str, str]], reference: str | None) -> list[str]:
    """Sentences: every (a, b) pair as b minus a, and every variant against ``reference``."""
    text = []
    for setup, f in setup_frames(run):
        head = _heading(run, setup)
        present = set(f["variant"])
        text.append(ranking(head, f))
        for a, b in pairs:
            if a in present and b in present:
                text.append(f"{head}{b} minus {a}: {describe(paired(f, 'final_val_acc', a, b).scaled(100))}.")
        if reference in present:
            for v in run.variants:
                if v != reference and v in present and (reference, v) not in pairs:
                    text.append(f"{head}{v} minus {reference}: "
                                f"{describe(paired(f, 'final_val_acc', reference, v).scaled(100))}.")
    return text


def dropconnect(run: Run) -> list[str]:
    """Exercise 6: DropConnect against dropout at the same rates, and both against none."""
    info = {v: (str(run.param(v, "noise")), run.rates(v)) for v in run.variants}
    none = next((v for v, (_, r) in info.items() if all(p == 0 for p in r)), None)
    pairs = [(d, c) for c, (nc, rc) in info.items() if nc == "dropconnect"
             for d, (nd, rd) in info.items() if nd == "dropout" and rd == rc]
    sections = final_accuracy_section(run, none, [("noise", "noise"), ("dropout_1", "p1"), ("dropout_2", "p2")])
    return (noise_kinds_note(run) + ["Matched rates: the same p_i for both kinds.", ""] + sections + [""]
            + findings(_matched_comparisons(run, pairs, none)))


def noise_kinds_note(run: Run) -> list[str]:
    """The definitions (from the spec) of the noise kinds this run used, rate p_i being hidden layer i's value."""
    from experiments.spec import NOISE_KINDS

    kinds = list(dict.fromkeys(str(k) for k in run.summary["noise"]))
    return ["Noise kinds (from `experiments/spec.py`; the rate p is the hidden layer's value of `--dropout`):", "",
            *[f"- `{k}`: {NOISE_KINDS[k]}" for k in kinds if k in NOISE_KINDS], ""]


def noise_injection(run: Run) -> list[str]:
    """Exercise 7: other noise kinds at a fixed architecture, against dropout and none."""
    info = {v: (str(run.param(v, "noise")), run.rates(v)) for v in run.variants}
    dropout = next((v for v, (k, r) in info.items() if k == "dropout" and any(p > 0 for p in r)), None)
    sections = final_accuracy_section(run, dropout, [("noise", "noise"), ("dropout_1", "rate 1"),
                                                     ("dropout_2", "rate 2")])
    sections = noise_kinds_note(run) + sections
    text = _matched_comparisons(run, [], dropout)
    for setup, f in setup_frames(run):
        head = _heading(run, setup)
        better = [v for v in run.variants if v != dropout and v in set(f["variant"])
                  and paired(f, "final_val_acc", dropout, v).mean > 0]
        clear = [v for v in better if paired(f, "final_val_acc", dropout, v).clear]
        text.append(f"{head}variants above {dropout} on the mean: {', '.join(better) or '(no variant)'}; of "
                    f"these, beyond the seed noise: {', '.join(clear) or '(no variant)'}.")
    acts = _activation_frame(run)
    if acts is not None and len(acts):
        last = int(acts["epoch"].max())
        pre = acts[(acts["stage"] == "pre_noise") & (acts["forward_mode"] == "eval")]
        sections += ["", "## Scale of the hidden activations", "",
                     "Root mean square of each hidden layer's activations (eval mode, before the noise) on the probe "
                     "batch: the yardstick for the additive noise's σ.", "",
                     mean_spread_table(pre[pre["epoch"].isin({0, last})], [Metric("rms", "RMS", 1.0, 3)],
                                       ["setup", "variant", "layer", "epoch"])]
        plot = curve_plot(pre.assign(layer_label="hidden layer " + pre["layer"].astype(str)), x="epoch", y="rms",
                          hue="variant", col="layer_label", row="setup" if len(run.setups) > 1 else None,
                          path=run.image("activation_rms.png"), ylabel="RMS of activations",
                          title=f"{run.experiment}: scale of the hidden activations (eval mode)")
        sections += ["", image_link(plot, "RMS of the hidden activations per epoch")]
        for setup, f in setup_frames(run, pre):
            head = _heading(run, setup)
            ref = f[(f["variant"] == dropout) & (f["epoch"] == last)] if dropout else f.iloc[0:0]
            if ref.empty:
                continue
            rms = {layer: stat(ref[ref["layer"] == layer]["rms"]) for layer in sorted(set(ref["layer"]))}
            p = info[dropout][1]
            text.append(f"{head}dropout's noise on a unit has sd sqrt(p/(1-p))·|h|, so its RMS over the layer is "
                        f"sqrt(p/(1-p)) × the activations' RMS: " + ", ".join(
                            f"layer {layer}: {math.sqrt(p[layer - 1] / (1 - p[layer - 1])) * s.mean:.3f}"
                            for layer, s in rms.items() if p[layer - 1] < 1)
                        + f" (activation RMS of {dropout} at epoch {last}: "
                        + ", ".join(f"{fmt_stat(s, 3)}" for s in rms.values()) + ").")
            for v, (k, r) in info.items():
                if k != "additive":
                    continue
                own = f[(f["variant"] == v) & (f["epoch"] == last)]
                own_rms = [stat(own[own["layer"] == layer]["rms"]).mean for layer in sorted(rms)]
                text.append(f"{head}{v}: σ = {rates_label(r)} is " + ", ".join(
                    f"{r[layer - 1] / s.mean:.2f}" for layer, s in rms.items())
                    + f" × {dropout}'s activation RMS per layer at epoch {last}; its own activations end with RMS "
                    + ", ".join(f"{x:.3f}" for x in own_rms) + ", so σ is "
                    + ", ".join(f"{r[i] / x:.2f}" for i, x in enumerate(own_rms)) + " × its own signal.")
    return sections + [""] + findings(text)


ANALYSES: dict[str, Callable[[Run], list[str]]] = {
    "dropout_swap": dropout_swap,
    "long_training": long_training,
    "activation_variance": activation_variance,
    "test_time_dropout": test_time_dropout,
    "dropout_vs_weight_decay": dropout_vs_weight_decay,
    "dropconnect": dropconnect,
    "noise_injection": noise_injection,
}


def across_setups(run: Run) -> list[str]:
    """With several backends: how far apart their mean final test accuracies are, per variant."""
    if len(run.setups) < 2:
        return []
    means = run.ok.groupby(["variant", "setup"], sort=False)["final_val_acc"].mean().mul(100).unstack("setup")
    ranges = (means.max(axis=1) - means.min(axis=1)).dropna()
    if ranges.empty:
        return []
    widest = ranges.idxmax()
    return ["## Across backends", "",
            f"Mean final test accuracy per variant differs between the {len(run.setups)} backends by at most "
            f"{ranges.max():.2f} points ({widest}: " + ", ".join(f"{k} {v:.2f} %" for k, v in means.loc[widest].items())
            + f"); the median over variants is {ranges.median():.2f} points. The sentences above are per backend.", ""]


# ------------------------------------------------------------------------------------------------------ the report
def _header(run: Run, description: str) -> list[str]:
    ok = run.ok
    lines = [f"# {run.experiment}", "", description, ""]
    facts = []
    if run.meta.get("command"):
        facts.append(f"command: `{run.meta['command']}`")
    versions = run.meta.get("frameworks") or {}
    backends = list(dict.fromkeys(run.summary["backend"]))
    facts.append("backends: " + ", ".join(f"{b} {versions.get(b, '')}".strip() for b in backends))
    facts.append("seeds: " + ", ".join(str(s) for s in sorted(set(run.summary["seed"]))))
    facts.append(f"epochs: {int(run.summary['epochs'].max())}")
    facts.append(f"jobs finished: {len(ok)}/{len(run.summary)}")
    lines += ["; ".join(facts) + ".", ""]
    limit = run.summary["train_limit"].dropna() if "train_limit" in run.summary else []
    if len(limit):
        lines += [f"**Smoke run:** trained on the first {int(limit.max()):,} training images only; these numbers "
                  "are not the exercise's answer.", ""]
    failed = run.summary[run.summary["status"] != "ok"]
    if len(failed):
        lines += [f"**{len(failed)} job(s) did not finish** and are left out of every number below (see the runs "
                  "table at the end).", ""]
    return lines


def write(experiment: str, folder: Path) -> Path | None:
    """Write ``report.md`` (and the plots) for the run in ``folder``; returns its path, or None when there is
    nothing to report."""
    import pandas as pd

    from experiments.catalog import CATALOG
    from experiments.report import side_by_side

    folder = Path(folder)
    summary_path = folder / "summary.csv"
    if not summary_path.exists():
        return None
    entry = CATALOG.get(experiment)
    analysis = ANALYSES.get(entry.analysis) if entry is not None and entry.analysis else None
    summary = pd.read_csv(summary_path)
    runs_table = ["```", side_by_side(summary.to_dict("records")), "```", ""]
    if analysis is None:
        lines = [f"# {experiment}", "", *runs_table]
    else:
        run = Run(experiment, folder)
        lines = (_header(run, entry.description) + analysis(run) + [""] + across_setups(run)
                 + ["## Runs", "", *runs_table])
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report
