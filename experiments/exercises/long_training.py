"""Exercise 2: more epochs, with and without dropout: the curves and the generalisation gap."""
from __future__ import annotations


import pandas as pd

from experiments.entry import SEEDS, Entry, rates
from experiments.report.plots import curve_plot, image_link
from experiments.report.results import SETUP, Run
from experiments.report.sections import (
    Metric, findings, mean_spread_table, setup_frames, setup_heading,
)
from experiments.report.stats import describe, fmt_stat, paired, stat


def ahead_from(difference) -> int | None:
    """The first epoch from which ``difference`` (a Series indexed by epoch) stays above 0 to the end; None if it
    is not above 0 at the end."""
    since = None
    for epoch, value in sorted(difference.items(), reverse=True):
        if not value > 0:
            break
        since = int(epoch)
    return since


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
        head = setup_heading(run, setup)
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


ENTRY = Entry("long-training", "ex. 2: dropout (0.5, 0.5) vs none for 50 epochs; train (noise off) and test curves "
              "and the generalisation gap per epoch", number=2,
              variants=(rates("dropout-0.5", 0.5, 0.5), rates("none", 0.0, 0.0)), seeds=SEEDS,
              train={"epochs": 50}, probes=("train_eval",), analysis=long_training)
