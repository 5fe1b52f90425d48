"""The section's own run: D2L's dropout MLP as the book trains it, on every backend side by side.

Its report: the learning curves, the side-by-side table, how far each backend x mode lands from the NumPy
reference (paired by seed), and where the time goes (first epoch against the steady ones).
"""
from __future__ import annotations

import math

import pandas as pd

from experiments.entry import Entry
from experiments.report.results import Run
from experiments.report.sections import learning_curves_section, markdown, runs_section
from experiments.report.stats import fmt_stat, paired, stat, verdict

REFERENCE = ("numpy", "eager", "stock")  # backend, mode, tier: the plain NumPy backend is the harness's reference

AGREEMENT_INTRO = (
    "Each backend x tier x mode against the NumPy reference (`numpy`, stock, eager, same implementation; where only "
    "the tuned NumPy ran, that one): final validation "
    "accuracy minus NumPy's, seed by seed, as the mean over seeds ± sd and a 95 % t-interval. With the shared "
    "initialisation and one data stream, a seed gives every backend the same initial weights and the same batches, "
    "so what is left is each framework's own dropout draws and its float rounding; a difference whose interval "
    "contains 0 is *within the seed noise*, which is what agreement looks like. Differences in percentage points.")


def arm_columns(run: Run) -> list[str]:
    """The columns that name a backend x mode (with the tier and the implementation when the run has several)."""
    several = [c for c in ("tuning", "impl") if run.ok[c].nunique() > 1]
    return ["backend", *several, "mode"]


def agreement(run: Run) -> tuple[list[dict], list[str]]:
    """The table rows (one per backend x mode but the reference) and the sentences."""
    rows, text = [], []
    columns = arm_columns(run)
    for impl, frame in run.ok.groupby("impl", sort=False):
        numpy = frame[(frame["backend"] == REFERENCE[0]) & (frame["mode"] == REFERENCE[1])]
        reference = numpy[numpy["tuning"] == REFERENCE[2]]
        if reference.empty:
            reference = numpy
        if reference.empty:
            continue
        reference = reference[reference["setup"] == reference["setup"].iloc[0]]
        ref_setup = reference["setup"].iloc[0]
        ref_acc = stat(reference["final_val_acc"] * 100)
        text.append(f"NumPy reference ({impl}): final validation accuracy {fmt_stat(ref_acc)} % over "
                    f"{ref_acc.n} seed(s).")
        for setup, group in frame.groupby("setup", sort=False):
            if setup == ref_setup:
                continue
            s = paired(frame, "final_val_acc", ref_setup, setup, key="setup").scaled(100)
            low, high = s.interval
            row = {c: group[c].iloc[0] for c in columns}
            row.update({"seeds paired": s.n, "Δ val acc vs numpy (points)": fmt_stat(s, 2, True),
                        "95 % CI": f"{low:+.2f} to {high:+.2f}" if math.isfinite(low) else "-",
                        "verdict": verdict(s), "_stat": s})
            rows.append(row)
    judged = [r for r in rows if r["_stat"].n >= 2]
    if judged:
        within = sum(not r["_stat"].clear for r in judged)
        widest = max(judged, key=lambda r: abs(r["_stat"].mean))
        text.append(f"{within} of {len(judged)} backend x mode arms are within the seed noise of NumPy's final "
                    f"validation accuracy; the largest mean difference is {widest['_stat'].mean:+.2f} points "
                    f"({' '.join(str(widest[c]) for c in columns)}, {widest['verdict']}).")
    elif rows:
        text.append("One seed only: the differences have no spread to judge them by; run with `--seeds 0 1 2`.")
    return [{k: v for k, v in r.items() if k != "_stat"} for r in rows], text


def agreement_section(run: Run) -> list[str]:
    lines = ["## Agreement with the NumPy reference", "", AGREEMENT_INTRO, ""]
    backends = set(run.ok["backend"])
    if REFERENCE[0] not in backends:
        return lines + ["The NumPy reference did not run (or did not finish); add `--backend numpy` to compare.", ""]
    rows, text = agreement(run)
    if not rows:
        return lines + ["Only the NumPy reference ran; there is nothing to compare it with.", ""]
    return lines + [markdown(rows), "", *[f"- {t}" for t in text], ""]


def timing(run: Run) -> tuple[list[dict], list[str]]:
    """Per backend x mode: the first epoch (compilation and warm-up) against the steady ones, and samples/s."""
    columns = arm_columns(run)
    multi_epoch = int(run.ok["epochs"].max()) > 1
    rows, medians = [], {}
    for keys, group in run.ok.groupby(columns, sort=False):
        first = float(group["first_epoch_seconds"].median())
        steady = float(group["median_epoch_seconds"].median()) if multi_epoch else math.nan
        medians[keys] = (first, steady)
        rows.append({**dict(zip(columns, keys)), "seeds": len(group), "1st epoch s": f"{first:.2f}",
                     "steady epoch s": f"{steady:.2f}" if multi_epoch else "-",
                     "warm-up s (1st − steady)": f"{first - steady:+.2f}" if multi_epoch else "-",
                     "samples/s (steady)": f"{group['samples_per_second'].median():,.0f}" if multi_epoch else "-"})
    text = []
    if not multi_epoch:
        return rows, ["One epoch per job: there are no steady epochs to set the first one against."]
    fastest = min(medians, key=lambda k: medians[k][1])
    text.append(f"fastest steady epoch: {' '.join(map(str, fastest))} at {medians[fastest][1]:.2f} s.")
    frame = pd.DataFrame([(*k, *v) for k, v in medians.items()], columns=[*columns, "first", "steady"])
    for keys, group in frame.groupby([c for c in columns if c != "mode"], sort=False):
        modes = dict(zip(group["mode"], zip(group["first"], group["steady"])))
        if {"eager", "compiled"} <= set(modes):
            (fe, se), (fc, sc) = modes["eager"], modes["compiled"]
            name = " ".join(map(str, keys if isinstance(keys, tuple) else (keys,)))
            speed = f"{se / sc:.1f}x faster" if se >= sc else f"{sc / se:.1f}x slower"
            sentence = (f"{name}: steady epoch compiled {sc:.2f} s, eager {se:.2f} s (compiled {speed}); first "
                        f"epoch compiled {fc:.2f} s, eager {fe:.2f} s")
            extra, saving = (fc - sc) - (fe - se), se - sc
            if fc > sc and saving > 0 and extra > 0:
                sentence += f"; compiling pays for its warm-up after about {math.ceil(extra / saving)} epoch(s)"
            text.append(sentence + ".")
    if "tuning" in columns:
        for keys, group in frame.groupby([c for c in columns if c != "tuning"], sort=False):
            tiers = dict(zip(group["tuning"], group["steady"]))
            if {"stock", "tuned"} <= set(tiers) and tiers["tuned"] > 0:
                name = " ".join(map(str, keys if isinstance(keys, tuple) else (keys,)))
                text.append(f"{name}: steady epoch stock {tiers['stock']:.2f} s, tuned {tiers['tuned']:.2f} s: the "
                            f"same-law speed paths gain {tiers['stock'] / tiers['tuned']:.2f}x (one run; "
                            "`python harness.py bench` measures the gain in rounds, with its spread).")
    return rows, text


def time_section(run: Run) -> list[str]:
    meta = run.meta
    conditions = f"{meta.get('threads', '?')} thread(s) per job on {meta.get('cpu', 'this machine')}"
    rows, text = timing(run)
    steady = int(run.ok["epochs"].max()) - 1
    if 0 < steady < 4:
        text.insert(0, f"only {steady} steady epoch(s) per job: a rough figure; the default 10 epochs give 9.")
    return ["## Time", "", f"Medians over seeds, {conditions}, one job at a time. Epoch 1 carries compilation "
            "and warm-up; the steady epoch time is the median of epochs 2..E "
            "(`experiments.report.stats.steady_epochs`). "
            "These are the timings of this run on this machine, disturbed by whatever else ran on it; "
            "`python harness.py bench` measures them against the machine's floor.", "", markdown(rows), "",
            *[f"- {t}" for t in text], ""]


def d2l(run: Run) -> list[str]:
    """The main run's report: learning curves, the side-by-side table, agreement with NumPy, time."""
    if len(run.ok) == 0:
        return runs_section(run, "Side by side") + ["No job finished; the table shows why."]
    return learning_curves_section(run) + runs_section(run, "Side by side") + agreement_section(run) + time_section(run)


ENTRY = Entry("d2l", "the section's run: D2L's recipe unless flags change it (784-256-256-10 MLP, dropout (0.5, 0.5), "
              "SGD lr 0.1, batch 256, 10 epochs)",
              number=0, analysis=d2l)
