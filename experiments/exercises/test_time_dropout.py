"""Exercise 4: dropout left on at test time: one noisy pass, and Monte-Carlo averages of N."""
from __future__ import annotations


import pandas as pd

from experiments.entry import SEEDS, Entry, rates
from experiments.report.plots import curve_plot, image_link
from experiments.report.results import Run
from experiments.report.sections import (
    Metric, findings, mean_spread_table, setup_frames, setup_heading,
)
from experiments.report.stats import describe, fmt_stat, stat


def test_time_dropout(run: Run) -> list[str]:
    """Exercise 4: noise off vs one stochastic pass vs Monte-Carlo averages of N passes, and their spread."""
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
        head = setup_heading(run, setup)
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


ENTRY = Entry("test-time-dropout", "ex. 4: after training with dropout: test accuracy with noise off, one noisy "
              "pass, Monte-Carlo averages of N noisy passes, and their spread", number=4,
              variants=(rates("dropout-0.5", 0.5, 0.5),), seeds=SEEDS, probes=("test_time_noise",),
              analysis=test_time_dropout)
