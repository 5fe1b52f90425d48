"""The bench's console table, ``bench.md`` and ``bench.png``."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from experiments.bench.floor import PEAK_SIZE, blas_line, epoch_flops, floor_seconds, step_flops
from experiments.bench.rows import sort_rows


def fmt(value: Any, spec: str, empty: str = "-") -> str:
    """A number in ``spec``, or ``empty`` for a missing one (None, '', NaN)."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return empty
    return format(value, spec)


TABLE = [  # header, key, format
    ("backend", "backend", "s"), ("mode", "mode", "s"), ("steady s", "steady_median_seconds", ".3f"),
    ("IQR s", "steady_iqr_seconds", ".3f"), ("x floor", "ratio_to_floor", ".2f"),
    ("x full floor", "ratio_to_full_floor", ".2f"),
    ("1st epoch s", "first_epoch_seconds", ".3f"), ("import s", "import_seconds", ".2f"),
    ("build s", "build_seconds", ".3f"), ("eval s", "eval_seconds", ".3f"), ("samples/s", "samples_per_second", ",.0f"),
    ("peak RSS MB", "peak_rss_mb", ".0f"), ("harness s", "harness_seconds", ".4f"),
    ("harness %", "harness_fraction", ".1%"), ("val acc", "final_val_acc", ".4f"),
    ("version", "framework_version", "s"),
    ("status", "status", "s"),
]


def table_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    cells = []
    for row in sort_rows(rows):
        line = [fmt(row.get(key), spec) for _, key, spec in TABLE]
        if row.get("status") != "ok" and row.get("error"):
            line[-1] = f"{row['status']}: {row['error']}"
        cells.append(line)
    return cells


def console_table(rows: list[dict[str, Any]], floor_line: str) -> str:
    headers = [h for h, _, _ in TABLE]
    cells = table_cells(rows)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    text_columns = {i for i, (_, _, spec) in enumerate(TABLE) if spec == "s"}
    lines = ["  ".join(h.ljust(w) if i in text_columns else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths))).rstrip()]
    for c in cells:
        lines.append("  ".join(v.ljust(w) if i in text_columns else v.rjust(w)
                               for i, (v, w) in enumerate(zip(c, widths))).rstrip())
    return "\n".join([*lines, "", floor_line])


def machine_line(meta: dict[str, Any], floor: dict[str, Any] | None) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted((meta.get("frameworks") or {}).items()) if k != "numpy")
    blas = blas_line(floor["blas"]) if floor else "unmeasured"
    peak = f", peak sgemm {floor['peak_gflops']:.0f} GFLOP/s" if floor and floor.get("peak_gflops") else ""
    own = meta.get("floor_own_kernels")
    if peak and own and own.get("peak_gflops"):
        peak += f" ({own['unset']}={own['set_to']}; {own['peak_gflops']:.0f} with OpenBLAS's own kernels)"
    return (f"CPU: {meta.get('cpu')} ({meta.get('vector_isa') or 'ISA unknown'}, {meta.get('cpu_count')} cores{peak}); "
            f"threads: {meta.get('threads')}; "
            f"device: {meta.get('bench', {}).get('device')}; Python {meta.get('python')}, NumPy {meta.get('numpy')}"
            f"{'; ' + versions if versions else ''}; BLAS: {blas}")


def own_kernels_lines(own: dict[str, Any] | None) -> list[str]:
    """The paragraph on the floor measured once more without the environment's kernel choice, where it was."""
    if not own:
        return []
    return [f"{own['unset']}={own['set_to']} in this environment names the floor's BLAS kernels (the NumPy jobs run "
            f"them too). Measured once more after the last job with it unset, OpenBLAS choosing its own kernels for "
            f"this CPU ({own['blas_line']}): the same GEMMs took {own['floor_seconds']:.3f} s/epoch "
            f"({own['gflops']:.0f} GFLOP/s on the model's shapes; peak {own['peak_gflops']:.0f} GFLOP/s), "
            f"{own['ratio_to_floor']:.2f}x the floor above. Against that floor every `x floor` here would be "
            f"{1 / own['ratio_to_floor']:.2f} times as high: a framework that picks its GEMM kernels from the CPU "
            f"(oneDNN, XLA's) beats the floor above by the kernels' difference, not by doing less work.", ""]


def floor_summary(floor: dict[str, Any] | None, n_train: int, batch: int, sizes: Sequence[int]) -> str:
    if not floor:
        return "floor: not measured"
    steps = n_train / batch
    each = [m["step_seconds"] * steps for m in floor.get("measurements", ())]
    spread = (f"; pooled from {len(each)} measurements between the jobs, {min(each):.3f} to {max(each):.3f} s"
              if len(each) > 1 else "")
    peak = (f"; peak sgemm {floor['peak_gflops']:.0f} GFLOP/s ({PEAK_SIZE}^2), the floor at {floor['efficiency']:.0%}"
            " of it" if floor.get("peak_gflops") else "")
    return (f"necessary floor: {floor_seconds(floor, n_train, batch):.3f} s/epoch = {steps:.2f} steps x "
            f"{floor['step_seconds'] * 1e3:.3f} ms of GEMMs per step ({floor['gflops']:.0f} GFLOP/s on the model's "
            f"shapes, median of {floor['rounds']} rounds; {epoch_flops(sizes, n_train) / 1e9:.1f} GFLOP per epoch); "
            f"full 9-GEMM count: {floor_seconds(floor, n_train, batch, full=True):.3f} s/epoch" + peak + spread)


def write_markdown(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any], floor: dict[str, Any] | None,
                   sizes: Sequence[int], n_train: int, batch: int, breakdown: Sequence[str] = ()) -> None:
    bench = meta.get("bench", {})
    lines = [f"# dropbench: benchmark ({'-'.join(map(str, sizes))} MLP, batch {batch}, {n_train:,} training examples, "
             f"{bench.get('repeats')} steady epochs after 1 warm-up epoch per job)", "",
             f"Machine: {machine_line(meta, floor)}", "",
             f"Command: `{meta.get('command')}`; started {meta.get('started')}", "", "## Side by side", "",
             "Sorted by steady epoch time (median over the steady epochs; IQR = 75th - 25th percentile). "
             "`x floor` = steady / the necessary floor; `x full floor` = steady / the old 9-GEMM count. `harness` = the harness's own work per steady epoch (batch order, "
             "`EpochBatches` and its gathers, divergence check, the epoch's row), measured in the worker; "
             "`harness %` is its share of the epoch's wall time.", ""]
    headers = [h for h, _, _ in TABLE]
    lines.append("| " + " | ".join(headers) + " |")
    text_columns = {i for i, (_, _, spec) in enumerate(TABLE) if spec == "s"}
    lines.append("| " + " | ".join("---" if i in text_columns else "---:" for i in range(len(headers))) + " |")
    for cells in table_cells(rows):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Floor", ""]
    if bench.get("device") == "gpu":
        lines += ["The floor is NumPy's BLAS on this machine's CPU: on `--device gpu`, `x floor` compares a GPU epoch "
                  "with that CPU floor (no GPU floor is measured).", ""]
    if floor:
        env = ", ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in floor["environment"].items())
        lines += [floor_summary(floor, n_train, batch, sizes) + ".", "",
                  f"Measured in its own process with the jobs' environment and threads ({floor['threads']}), under "
                  f"{floor['interpreter']} (NumPy {floor['numpy']}; BLAS: {blas_line(floor['blas'])}). "
                  f"Environment: {env}.", "", *own_kernels_lines(meta.get("floor_own_kernels")),
                  "Counted (the necessary floor): the GEMMs a training step needs: per layer the forward product and "
                  "the kernel gradient, and the input gradient of every layer but the first (the gradient w.r.t. "
                  "the images feeds nothing; no framework computes it). Elementwise work is not counted. That is "
                  f"{step_flops(sizes, 1):,} FLOPs per example, {epoch_flops(sizes, n_train) / 1e9:.1f} GFLOP per "
                  f"epoch; the old count with the first input gradient (3x forward, as `baselines.md` counts it): "
                  f"{step_flops(sizes, 1, full=True):,} and {epoch_flops(sizes, n_train, full=True) / 1e9:.1f}.", "",
                  "| GEMM | shape | MFLOP | median us | best us | GFLOP/s (median) | counted |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for g in floor["gemms"]:
            shape = f"{g['m']}x{g['k']}{'ᵀ' if g['ta'] else ''} @ {g['k']}x{g['n']}{'ᵀ' if g['tb'] else ''}"
            lines.append(f"| {g['name']} | {shape} | {g['flops'] / 1e6:.2f} | {g['median_seconds'] * 1e6:.1f} | "
                         f"{g['best_seconds'] * 1e6:.1f} | {g['gflops_median']:.0f} | "
                         f"{'yes' if g.get('necessary', True) else 'full count only'} |")
        peak = (f" Peak: a {PEAK_SIZE}x{PEAK_SIZE} float32 product, {floor['peak_gflops']:.0f} GFLOP/s median "
                f"({floor['peak_gflops_best']:.0f} best) over {len(floor['peak_samples'])} calls in the same "
                f"process; the floor's efficiency {floor['efficiency']:.0%}." if floor.get("peak_gflops") else "")
        lines += ["", f"One step: {floor['step_seconds'] * 1e3:.3f} ms median ({floor['gflops']:.0f} GFLOP/s), "
                      f"{floor['step_seconds_best'] * 1e3:.3f} ms best ({floor['gflops_best']:.0f} GFLOP/s), over "
                      f"every measurement; all nine: {floor['step_seconds_full'] * 1e3:.3f} ms.{peak} "
                      "Each measurement (one before each job, one after the last):", "",
                  "| when | floor s/epoch |", "| --- | ---: |"]
        lines += [f"| {m['when']} | {m['step_seconds'] * n_train / batch:.3f} |" for m in floor["measurements"]]
    else:
        lines.append(f"Not measured: {meta.get('floor_error', 'unknown error')}")
    lines += ["", *breakdown]
    lines += ["", "Files: `bench.csv` (every column), `bench.png`, `breakdown.csv`, `breakdown.png`, `meta.json`, `timings.csv` (the harness's "
              "per-epoch timings), `epochs.csv`, `summary.csv`, `logs/`.", ""]
    path.write_text("\n".join(lines))


def write_chart(path: Path, rows: list[dict[str, Any]], floor: float | None, title: str) -> None:
    from experiments import plots

    timed = [r for r in sort_rows(rows) if r.get("steady_median_seconds") is not None]
    fig, ax = plots.subplots(figsize=(8, 1.2 + 0.45 * max(1, len(timed))))
    labels = [f"{r['backend']} {r['mode']}" for r in timed]
    medians = [r["steady_median_seconds"] for r in timed]
    low = [r["steady_median_seconds"] - r["steady_q1_seconds"] for r in timed]
    high = [r["steady_q3_seconds"] - r["steady_median_seconds"] for r in timed]
    positions = list(range(len(timed)))
    ax.barh(positions, medians, height=0.6, xerr=[low, high], color="#4c72b0", capsize=3)
    for y, r in zip(positions, timed):
        if r.get("ratio_to_floor"):
            ax.text(r["steady_q3_seconds"], y, f"  {r['ratio_to_floor']:.2f}x floor", va="center", fontsize=8)
    right = max([r["steady_q3_seconds"] for r in timed] + [floor or 0.0, 1e-3])
    ax.set_xlim(0, right * 1.25)
    if floor:
        ax.axvline(floor, color="#c44e52", linestyle="--")
        ax.text(floor, 1.01, f"floor {floor:.3f} s", transform=ax.get_xaxis_transform(), color="#c44e52",
                fontsize=8, ha="center", va="bottom")
    ax.set_yticks(positions)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("steady epoch seconds (median, whiskers: interquartile range)")
    ax.set_title(title, fontsize=9, pad=14)
    if not timed:
        ax.text(0.5, 0.5, "no job finished", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=plots.DPI)
