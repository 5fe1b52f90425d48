"""The bench across batch sizes: per backend x mode, step time = t0 + k x (the floor's GEMM time of one step).

t0 is the fixed cost of a step (the framework's dispatch, launches, Python: what does not grow with the batch) and k
the compute factor (how many times the necessary GEMMs' time a step spends on work that does grow with it: the GEMMs
at the framework's own rate, the noise, the elementwise work). The fit is least squares on the relative residuals
(each size weighs the same, whether its step takes 0.2 ms or 20 ms), over every size the job ran at.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments.bench.output import fmt

SCALING_COLUMNS = ["backend", "mode", "batch_size", "hiddens", "status", "steady_median_seconds", "floor_seconds",
                   "ratio_to_floor", "floor_full_seconds", "ratio_to_full_floor", "samples_per_second", "steps",
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


def scaling_rows(results) -> list[dict[str, Any]]:
    """One row per backend x mode x batch size, with the per-step times the fit uses."""
    rows = []
    for result in results:
        for row in result.rows:
            entry = {c: row.get(c) for c in SCALING_COLUMNS}
            entry["n_train"] = result.n_train
            entry["steps"] = steps = result.n_train / result.batch  # the floor's count of steps (n / B)
            if result.floor:
                entry["floor_step_seconds"] = result.floor["step_seconds"]
            if row.get("steady_median_seconds") is not None:
                entry["step_seconds"] = row["steady_median_seconds"] / steps
            rows.append(entry)
    return rows


def fit_all(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The fit of every backend x mode over the sizes it has a step time and a floor at; the rows get the fitted
    step time and the residual."""
    fits = {}
    for key in dict.fromkeys((r["backend"], r["mode"]) for r in rows):
        points = [r for r in rows if (r["backend"], r["mode"]) == key and r.get("step_seconds")
                  and r.get("floor_step_seconds")]
        fit = fit_step_times([r["floor_step_seconds"] for r in points], [r["step_seconds"] for r in points])
        if fit is None:
            continue
        for r, fitted, residual in zip(points, fit["fitted"], fit["residuals"]):
            r.update(fit_step_seconds=fitted, fit_residual=residual)
        fits[key] = fit
    return fits


def fit_lines(rows: list[dict[str, Any]], fits: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The fit per backend x mode (t0 in microseconds, k) and its residual at each size, as a markdown table."""
    batches = sorted({r["batch_size"] for r in rows})
    lines = ["| backend | mode | t0 us/step | k | " + " | ".join(f"resid. B={b}" for b in batches) + " |",
             "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in batches) + " |"]
    for (backend, mode), fit in fits.items():
        residual = {r["batch_size"]: r.get("fit_residual") for r in rows if (r["backend"], r["mode"]) == (backend,
                                                                                                          mode)}
        lines.append(f"| {backend} | {mode} | {fit['t0_seconds'] * 1e6:.0f} | {fit['k']:.2f} | "
                     + " | ".join(fmt(residual.get(b), "+.1%") for b in batches) + " |")
    return lines


def scaling_markdown(path: Path, rows: list[dict[str, Any]], fits, machine: str, title: str,
                     breakdown: list[str]) -> None:
    batches = sorted({r["batch_size"] for r in rows})
    keys = list(dict.fromkeys((r["backend"], r["mode"]) for r in rows))
    by = {(r["backend"], r["mode"], r["batch_size"]): r for r in rows}
    header = ["| backend | mode | " + " | ".join(f"B={b}" for b in batches) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in batches) + " |"]
    lines = [f"# dropbench: scaling ({title})", "", f"Machine: {machine}", "",
             "## Ratio to the necessary floor (steady epoch / floor at the same batch size)", "", *header]
    for backend, mode in keys:
        lines.append(f"| {backend} | {mode} | "
                     + " | ".join(fmt(by.get((backend, mode, b), {}).get("ratio_to_floor"), ".2f") for b in batches)
                     + " |")
    lines += ["", "## Samples per second", "", *header]
    for backend, mode in keys:
        lines.append(f"| {backend} | {mode} | "
                     + " | ".join(fmt(by.get((backend, mode, b), {}).get("samples_per_second"), ",.0f")
                                  for b in batches) + " |")
    floors = {r["batch_size"]: r for r in rows}
    lines += ["", "Floor per size (s/epoch): " + ", ".join(
        f"B={b}: {fmt(floors[b].get('floor_seconds'), '.3f')} ({fmt(floors[b].get('floor_efficiency'), '.0%')} "
        "of peak)" for b in batches), "",
        "## Fixed cost per step and compute factor", "",
        "Least squares over the sizes of step seconds = t0 + k x (the floor's GEMM seconds per step at that size), "
        "on relative residuals (fit / measured - 1, printed per size). t0 is what a step costs whatever its size "
        "(dispatch, Python, launches); k is how many times the necessary GEMMs' time the rest of the step takes "
        "as it grows (1.0 would be the floor's own GEMMs and nothing else). With two sizes the fit is exact.", "",
        *fit_lines(rows, fits), "", *breakdown, "",
        "Files: `scaling.csv` (every size's row with the fit), `scaling.png`, `breakdown.csv`, `breakdown.png`, and "
        "one full bench folder per size (`batch-<B>/`).", ""]
    path.write_text("\n".join(lines))


def scaling_chart(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    from matplotlib.ticker import FormatStrFormatter

    from experiments import plots

    fig, (ratio_ax, rate_ax) = plots.subplots(1, 2, figsize=(12, 5))
    for backend, mode in dict.fromkeys((r["backend"], r["mode"]) for r in rows):
        points = sorted((r["batch_size"], r) for r in rows if (r["backend"], r["mode"]) == (backend, mode)
                        and r.get("ratio_to_floor") is not None)
        if not points:
            continue
        style = "-" if mode == "compiled" else "--"
        ratio_ax.plot([b for b, _ in points], [r["ratio_to_floor"] for _, r in points], style, marker="o",
                      label=f"{backend} {mode}")
        rate_ax.plot([b for b, _ in points], [r["samples_per_second"] for _, r in points], style, marker="o",
                     label=f"{backend} {mode}")
    floors = sorted({(r["batch_size"], r["floor_seconds"], r["n_train"]) for r in rows if r.get("floor_seconds")})
    if floors:
        rate_ax.plot([b for b, _, _ in floors], [n / f for _, f, n in floors], "k:", label="necessary floor")
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
