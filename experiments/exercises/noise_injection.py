"""Exercise 7: other noise at the same places: Gaussian multiplicative, additive, against dropout."""
from __future__ import annotations

import math


from experiments.entry import SEEDS, Entry, rates
from experiments.report.plots import curve_plot, image_link
from experiments.report.results import Run
from experiments.report.sections import (
    Metric, activation_frame, final_accuracy_section, findings, matched_comparisons, mean_spread_table,
    noise_kinds_note, rates_label, setup_frames, setup_heading,
)
from experiments.report.stats import fmt_stat, paired, stat


def noise_injection(run: Run) -> list[str]:
    """Exercise 7: other noise kinds at a fixed architecture, against dropout and none."""
    info = {v: (str(run.param(v, "noise")), run.rates(v)) for v in run.variants}
    dropout = next((v for v, (k, r) in info.items() if k == "dropout" and any(p > 0 for p in r)), None)
    sections = final_accuracy_section(run, dropout, [("noise", "noise"), ("dropout_1", "rate 1"),
                                                     ("dropout_2", "rate 2")])
    sections = noise_kinds_note(run) + sections
    text = matched_comparisons(run, [], dropout)
    for setup, f in setup_frames(run):
        head = setup_heading(run, setup)
        better = [v for v in run.variants if v != dropout and v in set(f["variant"])
                  and paired(f, "final_val_acc", dropout, v).mean > 0]
        clear = [v for v in better if paired(f, "final_val_acc", dropout, v).clear]
        text.append(f"{head}variants above {dropout} on the mean: {', '.join(better) or '(no variant)'}; of "
                    f"these, beyond the seed noise: {', '.join(clear) or '(no variant)'}.")
    acts = activation_frame(run)
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
            head = setup_heading(run, setup)
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


# Additive noise's sigma. Dropout with p = 0.5 adds, to every unit, zero-mean noise of std sqrt(p/(1-p)) |h| = |h|,
# and the hidden activations' RMS in the trained D2L network is about 0.3-0.6 (the report prints the measured value
# from its activation probe): sigma 0.5 injects about dropout's noise level, sigma 0.1 a fifth of it.
ADDITIVE_SIGMAS = (0.1, 0.5)

ENTRY = Entry("noise-injection", "ex. 7: dropout (0.5, 0.5) vs Gaussian multiplicative noise of the same variance "
              "vs additive Gaussian noise (sigma 0.1, 0.5) vs none", number=7,
              variants=(rates("none", 0.0, 0.0), rates("dropout-0.5", 0.5, 0.5),
                        rates("gaussian-0.5", 0.5, 0.5, noise="gaussian"),
                        *(rates(f"additive-{s:g}", s, s, noise="additive") for s in ADDITIVE_SIGMAS)),
              seeds=SEEDS, probes=("activation_variance",), analysis=noise_injection)
