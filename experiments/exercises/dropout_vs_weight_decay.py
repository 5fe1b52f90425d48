"""Exercise 5: dropout against weight decay, and both together: are the effects additive?"""
from __future__ import annotations


import pandas as pd

from backends.contract.spec import TrainSpec
from experiments.entry import SEEDS, Entry, rates
from experiments.report.plots import image_link, points_plot
from experiments.report.results import Run
from experiments.report.sections import (
    final_accuracy_section, findings, markdown,
    ranking, setup_frames, setup_heading,
)
from experiments.report.stats import describe, fmt_stat, stat


def dropout_vs_weight_decay(run: Run) -> list[str]:
    """Exercise 5: effects of dropout, weight decay and both, against none; additivity per weight decay."""
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
        head = setup_heading(run, setup)
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


WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)  # a decade grid: negligible, mild, strong for SGD lr 0.1 over 10 epochs

ENTRY = Entry("dropout-vs-weight-decay", "ex. 5: none, dropout (0.5, 0.5), weight decay 1e-4/1e-3/1e-2, and both; "
              "are the effects additive?", number=5,
              variants=(rates("none", 0.0, 0.0), rates("dropout-0.5", 0.5, 0.5),
                        *(rates(f"wd-{wd:g}", 0.0, 0.0, weight_decay=wd) for wd in WEIGHT_DECAYS),
                        *(rates(f"dropout+wd-{wd:g}", 0.5, 0.5, weight_decay=wd) for wd in WEIGHT_DECAYS)),
              seeds=SEEDS, analysis=dropout_vs_weight_decay)
