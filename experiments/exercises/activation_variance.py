"""Exercise 3: the variance of each hidden layer's activations, with and without dropout."""
from __future__ import annotations

import math

import numpy as np

from experiments.entry import SEEDS, Entry, rates
from experiments.report.plots import curve_plot, image_link
from experiments.report.results import Run
from experiments.report.sections import (
    Metric, activation_frame, findings, mean_spread_table, setup_frames, setup_heading,
)
from experiments.report.stats import fmt_stat, stat


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


def activation_variance(run: Run) -> list[str]:
    """Exercise 3: per-layer activation variance before/after the noise, train and eval mode, per epoch."""
    acts = activation_frame(run)
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
        head = setup_heading(run, setup)
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


ENTRY = Entry("activation-variance", "ex. 3: variance of each hidden layer's activations before/after the noise, "
              "train and eval mode, every epoch, dropout vs none", number=3,
              variants=(rates("dropout-0.5", 0.5, 0.5), rates("none", 0.0, 0.0)), seeds=SEEDS,
              probes=("activation_variance",), analysis=activation_variance)
