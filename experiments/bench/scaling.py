"""The bench across batch sizes: per backend x mode, step time = t0 + k x (the floor's GEMM time of one step).

t0 is the fixed cost of a step (the framework's dispatch, launches, Python: what does not grow with the batch) and k
the compute factor (how many times the necessary GEMMs' time a step spends on work that does grow with it: the GEMMs
at the framework's own rate, the noise, the elementwise work). The fit is least squares on the relative residuals
(each size weighs the same, however short or long its step), over every size the job ran at. It is fitted per
backend x mode x tier on the medians over the rounds (``scaling.csv``, ``scaling.md``), and once for every round
number on that round's own figures at each size (``round_fits``), for the breakdown's fixed cost with its interval.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments.bench.intervals import fmt_spread, spread_of
from experiments.bench.output import fmt

SCALING_COLUMNS = ["backend", "mode", "tuning", "batch_size", "hiddens", "status", "rounds_ok",
                   "steady_median_seconds", "steady_median_seconds_low", "steady_median_seconds_high", "floor_seconds",
                   "ratio_to_floor", "ratio_to_floor_low", "ratio_to_floor_high", "gain", "gain_low", "gain_high",
                   "floor_full_seconds", "ratio_to_full_floor", "samples_per_second", "steps",
                   "step_seconds", "floor_step_seconds", "fit_step_seconds", "fit_residual", "peak_gflops",
                   "floor_efficiency", "framework_gemm_seconds", "framework_gemm_gflops", "framework_gemm_to_floor",
                   "n_train"]


def fit_step_times(gemm_seconds: Sequence[float], step_seconds: Sequence[float]) -> dict[str, Any] | None:
    """Least squares of ``step = t0 + k * gemm`` with every residual relative to its step time.

    Returns t0 (seconds), k, the fitted steps and the relative residuals (fit / measured - 1), or None with fewer
    than two sizes. Two sizes fit exactly (residuals 0): only three or more say whether the line holds."""
    x, y = np.asarray(gemm_seconds, float), np.asarray(step_seconds, float)
    if len(x) < 2 or len(set(x.tolist())) < 2:
        return None
    design = np.stack([np.ones_like(x), x], axis=1) / y[:, None]
    (t0, k), *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)
    fitted = t0 + k * x
    return {"t0_seconds": float(t0), "k": float(k), "fitted": fitted.tolist(), "residuals": (fitted / y - 1).tolist(),
            "sizes": len(x)}


def _with_steps(row: dict[str, Any], n_train: int, batch: int) -> dict[str, Any]:
    """The row's per-step times: its steady epoch and the floor measured beside it, over the floor's count of steps
    (n / B)."""
    entry = {c: row.get(c) for c in SCALING_COLUMNS}
    entry.update(n_train=n_train, steps=n_train / batch, round=row.get("round"))
    if row.get("floor_seconds"):
        entry["floor_step_seconds"] = row["floor_seconds"] / entry["steps"]
    if row.get("steady_median_seconds") is not None:
        entry["step_seconds"] = row["steady_median_seconds"] / entry["steps"]
    return entry


def scaling_rows(results) -> list[dict[str, Any]]:
    """One row per backend x mode x tier x batch size (its medians over the rounds), with the per-step times the
    fit uses."""
    return [_with_steps(row, result.n_train, result.batch) for result in results for row in result.rows]


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["backend"], row["mode"], row.get("tuning")


def fit_all(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The fit of every backend x mode x tier over the sizes it has a step time and a floor at; the rows get the
    fitted step time and the residual."""
    fits = {}
    for key in dict.fromkeys(_key(r) for r in rows):
        points = [r for r in rows if _key(r) == key and r.get("step_seconds") and r.get("floor_step_seconds")]
        fit = fit_step_times([r["floor_step_seconds"] for r in points], [r["step_seconds"] for r in points])
        if fit is None:
            continue
        for r, fitted, residual in zip(points, fit["fitted"], fit["residuals"]):
            r.update(fit_step_seconds=fitted, fit_residual=residual)
        fits[key] = fit
    return fits


def round_fits(results) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """The fit of every backend x mode x tier for every round number, over that round's figures at each size (each
    against the floor measured beside it): keyed (backend, mode, tuning, round)."""
    rows = [_with_steps(row, result.n_train, result.batch) for result in results for row in result.round_rows
            if row.get("status") == "ok"]
    fits = {}
    for number in sorted({r["round"] for r in rows}):
        for key, fit in fit_all([r for r in rows if r["round"] == number]).items():
            fits[(*key, number)] = fit
    return fits


def fit_lines(rows: list[dict[str, Any]], fits: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    """The fit per backend x mode x tier (t0 in microseconds, k) and its residual at each size, as a markdown
    table."""
    batches = sorted({r["batch_size"] for r in rows})
    lines = ["| backend | mode | tier | t0 us/step | k | " + " | ".join(f"resid. B={b}" for b in batches) + " |",
             "| --- | --- | --- | ---: | ---: | " + " | ".join("---:" for _ in batches) + " |"]
    for key, fit in fits.items():
        residual = {r["batch_size"]: r.get("fit_residual") for r in rows if _key(r) == key}
        lines.append(f"| {' | '.join(map(str, key))} | {fit['t0_seconds'] * 1e6:.0f} | {fit['k']:.2f} | "
                     + " | ".join(fmt(residual.get(b), "+.1%") for b in batches) + " |")
    return lines


def size_floors(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per batch size, the median over its jobs of the floor (each job's own: the median of those measured beside
    it), its efficiency, and the examples."""
    from statistics import median

    floors = {}
    for batch in sorted({r["batch_size"] for r in rows}):
        at = [r for r in rows if r["batch_size"] == batch and r.get("floor_seconds")]
        if at:
            floors[batch] = {"floor_seconds": median(r["floor_seconds"] for r in at), "n_train": at[0]["n_train"],
                             "floor_efficiency": median(r["floor_efficiency"] for r in at
                                                        if r.get("floor_efficiency") is not None)
                             if any(r.get("floor_efficiency") is not None for r in at) else None}
    return floors


def scaling_markdown(path: Path, rows: list[dict[str, Any]], fits, machine: str, title: str,
                     breakdown: list[str]) -> None:
    batches = sorted({r["batch_size"] for r in rows})
    keys = list(dict.fromkeys(_key(r) for r in rows))
    by = {(*_key(r), r["batch_size"]): r for r in rows}
    header = ["| backend | mode | tier | " + " | ".join(f"B={b}" for b in batches) + " |",
              "| --- | --- | --- | " + " | ".join("---:" for _ in batches) + " |"]
    lines = [f"# dropbench: scaling ({title})", "", f"Machine: {machine}", "",
             "## Ratio to the necessary floor (steady epoch / the floor measured beside it, at the same batch size)",
             "", "The median over the rounds [its interval].", "", *header]
    for key in keys:
        lines.append(f"| {' | '.join(map(str, key))} | "
                     + " | ".join(fmt_spread(spread_of(by.get((*key, b), {}), "ratio_to_floor")) for b in batches)
                     + " |")
    lines += ["", "## Samples per second", "", *header]
    for key in keys:
        lines.append(f"| {' | '.join(map(str, key))} | "
                     + " | ".join(fmt(by.get((*key, b), {}).get("samples_per_second"), ",.0f")
                                  for b in batches) + " |")
    floors = size_floors(rows)
    lines += ["", "Floor per size (s/epoch, the median of the jobs' floors): " + ", ".join(
        f"B={b}: {fmt(floors.get(b, {}).get('floor_seconds'), '.3f')} "
        f"({fmt(floors.get(b, {}).get('floor_efficiency'), '.0%')} of peak)" for b in batches), "",
        "## Fixed cost per step and compute factor", "",
        "Least squares over the sizes of step seconds = t0 + k x (the floor's GEMM seconds per step at that size), "
        "on the medians over the rounds, on relative residuals (fit / measured - 1, printed per size). t0 is what "
        "a step costs whatever its size (dispatch, Python, launches); k is how many times the necessary GEMMs' "
        "time the rest of the step takes as it grows (1.0 would be the floor's own GEMMs and nothing else). With "
        "two sizes the fit is exact.", "",
        *fit_lines(rows, fits), "", *breakdown, "",
        "Files: `scaling.csv` (every size's row with the fit), `scaling.png`, `breakdown.csv`, `breakdown_rounds.csv`, "
        "`breakdown.png`, and one full bench folder per size (`batch-<B>/`).", ""]
    path.write_text("\n".join(lines))


def scaling_chart(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    from matplotlib.ticker import FormatStrFormatter

    from experiments.report import plots

    fig, (ratio_ax, rate_ax) = plots.subplots(1, 2, figsize=(12, 5))
    for backend, mode, tuning in dict.fromkeys(_key(r) for r in rows):
        points = sorted(((r["batch_size"], r) for r in rows if _key(r) == (backend, mode, tuning)
                         and r.get("ratio_to_floor") is not None), key=lambda point: point[0])
        if not points:
            continue
        style = "-" if mode == "compiled" else "--"
        marker = "o" if tuning == "tuned" else "s"
        label = f"{backend} {mode} {tuning}"
        ratio_ax.plot([b for b, _ in points], [r["ratio_to_floor"] for _, r in points], style, marker=marker,
                      label=label, fillstyle="full" if tuning == "tuned" else "none")
        rate_ax.plot([b for b, _ in points], [r["samples_per_second"] for _, r in points], style, marker=marker,
                     label=label, fillstyle="full" if tuning == "tuned" else "none")
    floors = sorted(size_floors(rows).items())
    if floors:
        rate_ax.plot([b for b, _ in floors], [f["n_train"] / f["floor_seconds"] for _, f in floors], "k:",
                     label="necessary floor")
    ratio_ax.axhline(1.0, color="k", linestyle=":")
    for ax, label in ((ratio_ax, "steady epoch / necessary floor"), (rate_ax, "samples per second")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    rate_ax.set_yscale("log")
    ratio_ax.set_yscale("log", base=2)  # eager modes run at 10x and more at small batches; 1-2x must stay legible
    ratio_ax.yaxis.set_major_formatter(FormatStrFormatter("%gx"))
    batches = sorted({r["batch_size"] for r in rows})
    for ax in (ratio_ax, rate_ax):
        ax.set_xticks(batches, [str(b) for b in batches])
    ratio_ax.legend(fontsize=7)
    rate_ax.legend(fontsize=7)  # the floor's dotted line
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=plots.DPI)
