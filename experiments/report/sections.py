"""Pieces that several reports share: markdown tables, the final-accuracy section, findings, notes.

Differences between variants are paired by seed: with the shared initialisation, variants with the same seed start
from the same weights and see the same batches, so the per-seed difference removes most of the run-to-run noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from backends.contract.spec import NOISE_KINDS
from experiments.report.plots import curve_plot, image_link, learning_curves, points_plot
from experiments.report.results import Run, dropout_columns, setting_value
from experiments.report.stats import describe, fmt_stat, paired, stat

NOISE_RULE = ("Differences are paired by seed (the same seed gives the same initial weights and batch order in "
              "every variant) and given as the mean over seeds, the sd over seeds, and a 95 % t-interval; a difference "
              "is *within the seed noise* when that interval contains 0. Accuracies are in %, differences in "
              "percentage points.")


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


def setup_heading(run: Run, setup: str) -> str:
    return f"**{setup}**: " if len(run.setups) > 1 else ""


def findings(paragraphs: list[str]) -> list[str]:
    return ["## What the numbers show", "", NOISE_RULE, "", *[f"- {p}" for p in paragraphs]]


def ranking(head: str, frame) -> str:
    """The variants ordered by mean final test accuracy."""
    means = frame.groupby("variant", sort=False)["final_val_acc"].mean().mul(100).sort_values(ascending=False)
    return f"{head}ranking by mean test accuracy: " + ", ".join(f"{v} {m:.2f} %" for v, m in means.items()) + "."


def matched_comparisons(run: Run, pairs: list[tuple[str, str]], reference: str | None) -> list[str]:
    """Sentences: every (a, b) pair as b minus a, and every variant against ``reference``."""
    text = []
    for setup, f in setup_frames(run):
        head = setup_heading(run, setup)
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


def noise_kinds_note(run: Run) -> list[str]:
    """The definitions (from the spec) of the noise kinds this run used, rate p_i being hidden layer i's value."""
    kinds = list(dict.fromkeys(str(k) for k in run.summary["noise"]))
    return ["Noise kinds (from `backends/contract/spec.py`; the rate p is the hidden layer's value of `--dropout`):", "",
            *[f"- `{k}`: {NOISE_KINDS[k]}" for k in kinds if k in NOISE_KINDS], ""]


def activation_frame(run: Run):
    acts = run.table("activations")
    if acts is None or len(acts) == 0:
        return None
    acts = acts.copy()
    acts["rms"] = np.sqrt(acts["mean_sq"])
    return acts


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


# How the report names the job settings the summary rows carry (``rundir.SETTING_COLUMNS``, the dropouts as one).
SETTINGS = {"dropouts": "dropouts", "hiddens": "hidden widths", "noise": "noise", "init": "init", "lr": "lr",
            "weight_decay": "weight decay", "batch_size": "batch", "train_limit": "training images"}


def _shown_setting(column: str, value: Any) -> str:
    if column == "train_limit":
        return "all" if value is None else f"the first {value:,}"
    return "-" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def settings_line(summary: pd.DataFrame) -> str:
    """What the jobs ran with, read from their rows: the settings common to every job, then those that differ."""
    layers = dropout_columns(summary.columns)
    same, varied = [], []
    for column, name in SETTINGS.items():
        if column == "dropouts" and layers:
            shown = [", ".join(f"{p:g}" for p in row if setting_value(p) is not None)
                     for row in summary[layers].itertuples(index=False)]
        elif column in summary:
            shown = [_shown_setting(column, setting_value(v)) for v in summary[column]]
        else:
            continue
        values = list(dict.fromkeys(shown))
        (same if len(values) == 1 else varied).append(f"{name} {values[0]}" if len(values) == 1 else name)
    if not same and not varied:
        return ""
    return ("settings: " + "; ".join(same) + (f"; differing between the jobs: {', '.join(varied)}" if varied else "")
            + ".")


def report_header(run: Run, description: str) -> list[str]:
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
    settings = settings_line(run.summary)
    if settings:
        lines += [settings, ""]
    limit = run.summary["train_limit"].dropna() if "train_limit" in run.summary else []
    if len(limit):
        lines += [f"**Smoke run:** trained on the first {int(limit.max()):,} training images only; these numbers "
                  "are not the exercise's answer.", ""]
    failed = run.summary[run.summary["status"] != "ok"]
    if len(failed):
        lines += [f"**{len(failed)} job(s) did not finish** and are left out of every number below (see the runs "
                  "table at the end).", ""]
    return lines


def target_label(frame: pd.DataFrame) -> str:
    """The heading of the time-to-target column: the target accuracy when every job had the same one."""
    targets = pd.to_numeric(frame.get("target_acc", pd.Series(dtype=float)), errors="coerce").dropna().unique()
    return f"s to {targets[0]:g}" if len(targets) == 1 else "s to target"


def time_to_target(ok: pd.DataFrame) -> str:
    """The median over seeds of ``seconds_to_target``; ``none`` where no seed reached the target, and how many did
    where only some did; ``-`` for a folder without the column."""
    if "seconds_to_target" not in ok or not len(ok):
        return "-"
    seconds = pd.to_numeric(ok["seconds_to_target"], errors="coerce").dropna()
    if seconds.empty:
        return "none"
    shown = f"{seconds.median():.2f}"
    return shown if len(seconds) == len(ok) else f"{shown} ({len(seconds)}/{len(ok)} seeds)"


def side_by_side_rows(summary_rows: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Jobs grouped by variant, backend, tier, implementation and mode; accuracy as mean and spread over seeds,
    times as medians over seeds, the time to the target accuracy among them. The one grouping of both tables below."""
    frame = pd.DataFrame(list(summary_rows))
    if frame.empty:
        return []
    to_target = target_label(frame)
    if "tuning" not in frame.columns:
        frame["tuning"] = "tuned"  # a run folder from before the tiers ran what is now the tuned code
    groups = []
    for keys, group in frame.groupby(["variant", "backend", "tuning", "impl", "mode"], sort=False):
        ok = group[group["status"] == "ok"]
        accuracy = ok["final_val_acc"].astype(float) if len(ok) else pd.Series(dtype=float)
        groups.append({
            "variant": keys[0], "backend": keys[1], "tuning": keys[2], "impl": keys[3], "mode": keys[4],
            "jobs ok": f"{len(ok)}/{len(group)}",
            "val_acc": f"{accuracy.mean():.4f}" if len(accuracy) else "-",
            "± sd": f"{accuracy.std(ddof=1):.4f}" if len(accuracy) > 1 else "",
            "val_loss": f"{ok['final_val_loss'].astype(float).mean():.4f}" if len(ok) else "-",
            "1st epoch s": f"{ok['first_epoch_seconds'].astype(float).median():.2f}" if len(ok) else "-",
            "epoch s": f"{ok['median_epoch_seconds'].astype(float).median():.2f}" if len(ok) else "-",
            to_target: time_to_target(ok),
            "samples/s": f"{ok['samples_per_second'].astype(float).median():,.0f}" if len(ok) else "-",
            "version": next((str(v) for v in group.get("framework_version", []) if isinstance(v, str)), ""),
            "problem": "; ".join(sorted({str(e) for e in group["error"] if isinstance(e, str) and e})),
        })
    return groups


def side_by_side(summary_rows: Iterable[dict[str, Any]]) -> str:
    """The side-by-side table for the console."""
    rows = side_by_side_rows(summary_rows)
    return pd.DataFrame(rows).to_string(index=False) if rows else "(no jobs)"


def side_by_side_markdown(summary_rows: Iterable[dict[str, Any]]) -> str:
    """The side-by-side table for ``report.md``."""
    return markdown(side_by_side_rows(summary_rows))


def runs_section(run: Run, heading: str = "Runs") -> list[str]:
    return [f"## {heading}", "", "Per variant, backend, tier (stock: the framework as its own tutorial writes it; "
            "tuned: this project's same-law speed paths), implementation and mode: jobs finished, final validation "
            "accuracy and loss (mean, sd over seeds), first epoch (compilation and warm-up) and steady epoch seconds "
            "(epochs 2..E), the time to target (training seconds, first epoch included, until the validation "
            "accuracy first reached the target of `--target-acc`; *none* where it never did), training samples per "
            "second (medians over seeds).", "",
            side_by_side_markdown(run.summary.to_dict("records")), ""]


def curve_roles(run: Run, frame) -> dict[str, str | None]:
    """Who gets the colours in the learning curves: with one variant, the backends (line style: what else varies,
    the mode); with several, the variants (a row of panels per backend x mode when there are several)."""
    if frame["variant"].nunique() == 1:
        arms = [setup[len(backend):].strip() for setup, backend in zip(frame["setup"], frame["backend"])]
        frame["arm"] = arms
        return {"hue": "backend", "style": "arm" if any(arms) else None, "row": None}
    return {"hue": "variant", "style": None, "row": "setup" if len(run.setups) > 1 else None}


def learning_curves_figure(run: Run, path=None):
    """The run's learning curves (finished jobs) as a matplotlib Figure, saved at ``path`` too when given; None
    when no epoch finished."""
    epochs = run.table("epochs")
    if epochs is None or len(epochs) == 0:
        return None
    roles = curve_roles(run, epochs)
    return learning_curves(epochs, **roles, path=path, title=f"{run.experiment}: learning curves")


def learning_curves_section(run: Run) -> list[str]:
    path = run.image("learning_curves.png")
    if learning_curves_figure(run, path) is None:
        return []
    return ["## Learning curves", "", "Training loss (measured in training mode, noise on, averaged over the epoch "
            "while the weights move, as D2L plots it), validation loss and validation accuracy on the 10,000 test "
            "images (noise off) after every epoch.", "", image_link(path, "learning curves"), ""]
