"""Where a backend x mode's steady epoch goes: the necessary floor, the noise, the fixed per-step cost, the rest.

    epoch = floor + noise + fixed + rest

- floor: the necessary GEMMs at NumPy's BLAS rate (``experiments.bench.floor``);
- noise: the same job with the noise off (dropout (0, 0)) against on: its steady epoch's difference;
- fixed: t0 x steps, t0 from the scaling fit (``experiments.bench.scaling``), when the run had several sizes;
  otherwise not measured (0 in the sum, said so in the table);
- rest: what is left, by construction: the framework's GEMMs above the floor's rate, the elementwise work (bias,
  ReLU, softmax, the update) and whatever else grows with the batch. It may be negative when the parts measured
  apart overlap (the fixed cost per step includes the per-step part of the noise's cost) or differ by the noise
  of the machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

BREAKDOWN_COLUMNS = ["backend", "mode", "batch_size", "epoch_seconds", "floor_seconds", "noise_seconds",
                     "fixed_seconds", "rest_seconds", "fixed_measured", "noise_measured", "noise_off_seconds", "t0_us", "k",
                     "noise_draw_library", "noise_draw_seconds", "gemm_library", "gemm_gflops", "blas_gemm_gflops",
                     "framework_gemm_seconds", "framework_gemm_to_floor"]
PARTS = (("floor_seconds", "floor (necessary GEMMs)", "#4c72b0"), ("noise_seconds", "noise", "#dd8452"),
         ("fixed_seconds", "fixed per step (t0 x steps)", "#55a868"), ("rest_seconds", "the rest", "#8c8c8c"))


def decompose(row: dict[str, Any], n_train: int, fit: dict[str, Any] | None,
              blas_gflops: float | None = None) -> dict[str, Any] | None:
    """The parts of one bench row's steady epoch (None for a row that has no steady time or no floor);
    ``blas_gflops``: NumPy's BLAS on the product the framework's GEMM rate was measured on, for comparison."""
    epoch, floor = row.get("steady_median_seconds"), row.get("floor_seconds")
    if epoch is None or not floor:
        return None
    steps = n_train / row["batch_size"]
    noise = row.get("noise_seconds") or 0.0
    fixed = fit["t0_seconds"] * steps if fit else 0.0
    return {"backend": row["backend"], "mode": row["mode"], "batch_size": row["batch_size"], "epoch_seconds": epoch,
            "floor_seconds": floor, "noise_seconds": noise, "fixed_seconds": fixed,
            "rest_seconds": epoch - floor - noise - fixed, "fixed_measured": fit is not None,
            "noise_measured": row.get("noise_seconds") is not None, "noise_off_seconds": row.get("noise_off_seconds"),
            "t0_us": fit["t0_seconds"] * 1e6 if fit else None, "k": fit["k"] if fit else None,
            "noise_draw_library": row.get("noise_draw_library"), "noise_draw_seconds": row.get("noise_draw_seconds"),
            "gemm_library": row.get("gemm_library"), "gemm_gflops": row.get("gemm_gflops"),
            "blas_gemm_gflops": blas_gflops, "framework_gemm_seconds": row.get("framework_gemm_seconds"),
            "framework_gemm_to_floor": row.get("framework_gemm_to_floor")}


def breakdown_rows(rows: list[dict[str, Any]], n_train: int, fits: dict[tuple[str, str], dict[str, Any]],
                   floor: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every row's parts, fastest first; ``floor``'s first GEMM (forward 1: B x 784 @ 784 x H, the product the
    worker times through each framework) gives NumPy's rate beside each framework's."""
    blas = floor["gemms"][0]["gflops_median"] if floor else None
    parts = [decompose(r, n_train, fits.get((r["backend"], r["mode"])), blas) for r in rows]
    return sorted((p for p in parts if p), key=lambda p: p["epoch_seconds"])


def _cell(value, spec: str, measured: bool = True) -> str:
    if not measured:
        return "not measured"
    return "-" if value is None else format(value, spec)


def breakdown_lines(parts: list[dict[str, Any]], batch: int, peak: float | None) -> list[str]:
    """The table of ``bench.md`` (and ``scaling.md``): seconds per epoch and share of it, the GEMM library and its
    rate through the framework."""
    if not parts:
        return [f"## Where the time goes (batch {batch})", "", "No job has a steady time and a floor to split.", ""]
    lines = [f"## Where the time goes (batch {batch})", "",
             "epoch = floor + noise + fixed + rest, in seconds per steady epoch (share of the epoch). noise: the "
             "same job with dropout (0, 0) against on; fixed: t0 x steps from the scaling fit (only a run over "
             "several `--batch-sizes` measures it); rest: the remainder by construction (the framework's GEMMs "
             "above the floor's rate, elementwise work; negative where the parts measured apart overlap). "
             "GEMM: the library the framework reports for its float32 matmul, and the rate the first layer's "
             f"forward product ({batch} x 784 @ 784 x H) reached through the framework in the worker (rounds of it "
             "in one program where the mode compiles, as GEMMs alone below), beside "
             "NumPy's BLAS on the same product in the floor's process (measured at other moments: on a busy "
             f"machine compare them with care){f'; peak sgemm here: {peak:.0f} GFLOP/s' if peak else ''}. "
             "Dropout alone: the framework's dropout of one step (every hidden layer's mask drawn and applied), "
             "timed alone in the worker on a generator of its own, times the epoch's steps: what its noise kernel "
             "costs, beside what the noise costs inside the epoch. GEMMs alone: the step's necessary products "
             "(the floor's) through the framework's own matmul, one after another, in the worker: 16 rounds of "
             "them a timed call, the rounds a loop inside one program where the mode compiles (each product "
             "waiting for the one before, none hoisted out of the loop), a round's median time times the steps, "
             "and that over the floor: where it is well above 1, the framework's GEMM library is slower than "
             "NumPy's BLAS on these shapes. Not a part of the sum.", "",
             "| backend | mode | epoch s | floor | noise | fixed | rest | dropout alone | dropout kernel | "
             "GEMM library | GEMM GFLOP/s | BLAS GFLOP/s | GEMMs alone s | GEMMs alone x floor |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for p in parts:
        def share(key: str, measured: bool = True) -> str:
            return _cell(p[key], ".3f", measured) + (f" ({p[key] / p['epoch_seconds']:.0%})" if measured else "")
        lines.append(f"| {p['backend']} | {p['mode']} | {p['epoch_seconds']:.3f} | {share('floor_seconds')} | "
                     f"{share('noise_seconds', p['noise_measured'])} | {share('fixed_seconds', p['fixed_measured'])} | "
                     f"{share('rest_seconds')} | {_cell(p['noise_draw_seconds'], '.3f')} | "
                     f"{p['noise_draw_library'] or '-'} | {p['gemm_library'] or '-'} | "
                     f"{_cell(p['gemm_gflops'], '.0f')} | {_cell(p['blas_gemm_gflops'], '.0f')} | "
                     f"{_cell(p['framework_gemm_seconds'], '.3f')} | {_cell(p['framework_gemm_to_floor'], '.2f')} |")
    return lines + [""]


def breakdown_chart(path: Path, parts: list[dict[str, Any]], title: str) -> None:
    """Stacked horizontal bars: each part from where the previous ended (a negative part goes back), so that every
    bar ends at the measured epoch (the dot)."""
    from experiments import plots

    fig, ax = plots.subplots(figsize=(9, 2.0 + 0.45 * max(1, len(parts))))
    for y, p in enumerate(parts):
        left = 0.0
        for key, label, color in PARTS:
            negative = p[key] < 0  # drawn as an outline over what it takes back, which stays visible
            ax.barh(y, p[key], left=left, height=0.6, label=label if y == 0 else None,
                    color="none" if negative else color, edgecolor=color if negative else "white",
                    hatch="//" if negative else None)
            left += p[key]
        ax.plot([p["epoch_seconds"]], [y], "k.", label="measured epoch" if y == 0 else None)
    ax.set_yticks(range(len(parts)))
    ax.set_yticklabels([f"{p['backend']} {p['mode']}" for p in parts])
    ax.invert_yaxis()
    ax.set_xlabel("seconds per steady epoch")
    ax.set_title(title, fontsize=8, wrap=True)
    if parts:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, frameon=False)  # below the label
    fig.tight_layout()
    fig.savefig(path, dpi=plots.DPI, bbox_inches="tight")  # the legend lies outside the axes
