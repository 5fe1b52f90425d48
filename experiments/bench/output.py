"""The bench's console tables, ``bench.md`` and ``bench.png``: every figure labelled with its tier, as the median
over the rounds [its interval] (``experiments.bench.intervals``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from experiments.bench.floor import PEAK_SIZE, blas_line, epoch_flops, floor_seconds, step_flops
from experiments.bench.intervals import Spread, coverage_words, fmt_spread, spread_of, tie_groups
from experiments.bench.rows import SPREADS


def fmt(value: Any, spec: str, empty: str = "-") -> str:
    """A number in ``spec``, or ``empty`` for a missing one (None, '', NaN)."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return empty
    return format(value, spec)


TABLE = [  # header, key, format; a key in SPREADS shows its median over the rounds [its interval]
    ("backend", "backend", "s"), ("mode", "mode", "s"), ("tier", "tuning", "s"),
    ("steady s", "steady_median_seconds", ".3f"), ("x floor", "ratio_to_floor", ".2f"),
    ("gain", "gain", ".2f"), ("x full floor", "ratio_to_full_floor", ".2f"),
    ("1st epoch s", "first_epoch_seconds", ".3f"), ("import s", "import_seconds", ".2f"),
    ("build s", "build_seconds", ".3f"), ("eval s", "eval_seconds", ".3f"), ("samples/s", "samples_per_second", ",.0f"),
    ("peak RSS MB", "peak_rss_mb", ".0f"), ("harness s", "harness_seconds", ".4f"),
    ("harness %", "harness_fraction", ".1%"), ("val acc", "final_val_acc", ".4f"), ("rounds", "rounds_ok", "d"),
    ("version", "framework_version", "s"),
    ("status", "status", "s"),
]
TIER_COLORS = {"stock": "#dd8452", "tuned": "#4c72b0"}  # bench.png's bars, by tier
TEXT = {i for i, (_, _, spec) in enumerate(TABLE) if spec == "s"}


def _cell(row: dict[str, Any], key: str, spec: str) -> str:
    if key in SPREADS:
        return fmt_spread(spread_of(row, key), spec)
    if key == "rounds_ok":
        return f"{row.get('rounds_ok') or 0}/{row.get('rounds') or 0}"
    return fmt(row.get(key), spec)


def table_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The side-by-side table's cells, in the rows' order (backend, mode, stock then tuned)."""
    cells = []
    for row in rows:
        line = [_cell(row, key, spec) for _, key, spec in TABLE]
        if row.get("error"):
            line[-1] = f"{row['status']}: {row['error']}"
        cells.append(line)
    return cells


def _aligned(headers: list[str], cells: list[list[str]], text: set[int]) -> list[str]:
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    return ["  ".join(v.ljust(w) if i in text else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))).rstrip()
            for line in [headers, *cells]]


def console_table(rows: list[dict[str, Any]], floor_line: str) -> str:
    return "\n".join([*_aligned([h for h, _, _ in TABLE], table_cells(rows), TEXT), "", floor_line])


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(backend, mode, stock row, tuned row) in the rows' order; a tier not run gives an empty row."""
    by = {(r["backend"], r["mode"], r.get("tuning")): r for r in rows}
    keys = dict.fromkeys((r["backend"], r["mode"]) for r in rows)
    return [(b, m, by.get((b, m, "stock"), {}), by.get((b, m, "tuned"), {})) for b, m in keys]


def gain_verdict(gain: Spread | None) -> str:
    """Whether the tuned tier is faster than the stock one beyond the spread of the rounds."""
    if gain is None:
        return "not measured"
    if not gain.has_interval:
        return "one round: no interval"
    if gain.low > 1:
        return "tuned faster"
    if gain.high < 1:
        return "stock faster"
    return "tied on this machine"


def two_tier_table(rows: list[dict[str, Any]], *, markdown: bool = False) -> list[str]:
    """The two tiers side by side: backend, mode, stock x floor, tuned x floor and the gain, each as its median over
    the rounds [its interval]."""
    headers = ["backend", "mode", "stock x floor", "tuned x floor", "gain (stock / tuned)", "verdict"]
    cells = []
    for backend, mode, stock, tuned in _pairs(rows):
        gain = spread_of(stock, "gain") or spread_of(tuned, "gain")
        cells.append([backend, mode, fmt_spread(spread_of(stock, "ratio_to_floor")),
                      fmt_spread(spread_of(tuned, "ratio_to_floor")), fmt_spread(gain), gain_verdict(gain)])
    if markdown:
        return ["| " + " | ".join(headers) + " |", "| --- | --- | ---: | ---: | ---: | --- |",
                *("| " + " | ".join(c) + " |" for c in cells)]
    return _aligned(headers, cells, {0, 1, 5})


def rank_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per tier, the backend x modes by their ratio to the floor, ordered only where the intervals do not overlap."""
    lines = []
    for tier in dict.fromkeys(r.get("tuning") for r in rows):
        items = [(f"{r['backend']} {r['mode']}", spread_of(r, "ratio_to_floor")) for r in rows
                 if r.get("tuning") == tier and r.get("status") == "ok"]
        if not items:
            continue
        groups, unranked = tie_groups(items)
        spreads = dict(items)
        lines += [f"{tier}:", ""]
        for place, group in enumerate(groups, start=1):
            named = "; ".join(f"{key} {fmt_spread(spreads[key])}" for key in group)
            lines.append(f"{place}. {'tied on this machine: ' if len(group) > 1 else ''}{named}")
        if unranked:
            lines.append("- not ranked (one round: no interval): "
                         + "; ".join(f"{key} {fmt_spread(spreads[key])}" for key in unranked))
        lines.append("")
    return lines


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
    spread = (f"; pooled from {len(each)} measurements, one beside each job's steady epochs, {min(each):.3f} to "
              f"{max(each):.3f} s" if len(each) > 1 else "")
    peak = (f"; peak sgemm {floor['peak_gflops']:.0f} GFLOP/s ({PEAK_SIZE}^2), the floor at {floor['efficiency']:.0%}"
            " of it" if floor.get("peak_gflops") else "")
    return (f"necessary floor: {floor_seconds(floor, n_train, batch):.3f} s/epoch = {steps:.2f} steps x "
            f"{floor['step_seconds'] * 1e3:.3f} ms of GEMMs per step ({floor['gflops']:.0f} GFLOP/s on the model's "
            f"shapes, median of {floor['rounds']} timing rounds; {epoch_flops(sizes, n_train) / 1e9:.1f} GFLOP per "
            "epoch); "
            f"full 9-GEMM count: {floor_seconds(floor, n_train, batch, full=True):.3f} s/epoch" + peak + spread)


def write_markdown(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any], floor: dict[str, Any] | None,
                   sizes: Sequence[int], n_train: int, batch: int, breakdown: Sequence[str] = ()) -> None:
    bench = meta.get("bench", {})
    rounds = bench.get("rounds_run", bench.get("rounds"))
    lines = [f"# dropbench: benchmark ({'-'.join(map(str, sizes))} MLP, batch {batch}, {n_train:,} training examples, "
             f"{rounds} round{'s' if rounds != 1 else ''} of 1 warm-up + {bench.get('repeats')} steady epochs per "
             f"job)", "", f"Machine: {machine_line(meta, floor)}", "",
             f"Command: `{meta.get('command')}`; started {meta.get('started')}", "",
             f"Every backend x mode x tier ran once a round, in a fresh worker process, in an order shuffled per "
             f"round (seed {bench.get('order_seed')}; the orders are in `meta.json`), with the floor timed beside "
             "its steady epochs. A figure is the median over the rounds of that round's figure, and [low, high] "
             f"its interval: {coverage_words(rounds or 0)}; `docs/bench.md` explains the method.", "",
             "## Two tiers", "",
             "`x floor`: a round's steady epoch / the floor timed beside that job's steady epochs; `gain`: stock "
             "steady / tuned steady of the same backend x mode in the same round (above 1: the tuned tier is faster). "
             "The verdict names a faster tier only where the gain's interval excludes 1.", "",
             *two_tier_table(rows, markdown=True), "",
             "## Rank on this machine (x floor)", "",
             "Per tier, the backend x modes in order of their ratio to the floor, where the intervals allow it: "
             "those whose intervals overlap (directly or through another) share a place, tied on this machine.", "",
             *rank_lines(rows),
             "## Side by side", "",
             "Per backend x mode, stock then tuned. `steady s`: the median of a round's steady epochs; `x full "
             "floor` = steady / the old 9-GEMM count. `harness` = the harness's own work per steady epoch (batch "
             "order, `EpochBatches` and its gathers, divergence check, the epoch's row), measured in the worker; "
             "`harness %` is its share of the epoch's wall time. `rounds`: the rounds that finished, of those "
             "planned. Every round's own row is in `rounds.csv`.", ""]
    headers = [h for h, _, _ in TABLE]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("| " + " | ".join("---" if i in TEXT else "---:" for i in range(len(headers))) + " |")
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
                      "Each measurement (one beside each job's steady epochs; a job's ratio is taken against its "
                      "own):", "",
                  "| when | floor s/epoch |", "| --- | ---: |"]
        lines += [f"| {m['when']} | {m['step_seconds'] * n_train / batch:.3f} |" for m in floor["measurements"]]
    else:
        lines.append(f"Not measured: {meta.get('floor_error', 'unknown error')}")
    lines += ["", *breakdown]
    lines += ["", "Files: `bench.csv` (a row per backend x mode x tier: the medians and intervals), `rounds.csv` (a "
              "row per backend x mode x tier x round), `bench.png`, `breakdown.csv`, `breakdown_rounds.csv`, "
              "`breakdown.png`, `meta.json`, `timings.csv` (the harness's per-epoch timings), `epochs.csv`, "
              "`summary.csv` (every round's, with a `round` column), `round-<r>/` (each round's run folder and "
              "its workers' `logs/`).", ""]
    path.write_text("\n".join(lines))


def write_chart(path: Path, rows: list[dict[str, Any]], floor: float | None, title: str) -> None:
    """``bench.png``: ``chart_figure`` saved at ``path``."""
    from experiments.report import plots

    plots.save(chart_figure(rows, floor, title), path)


def chart_figure(rows: list[dict[str, Any]], floor: float | None, title: str):
    """Each backend x mode x tier's ratio to the floor, the headline figure of ``bench.md``: the median over the
    rounds of a round's steady epoch over the floor timed beside it (whiskers: its interval), the floor as the line
    at 1, each bar labelled with that figure and its steady epoch seconds. A bar in seconds against the pooled floor
    would not be the figure its label names (each round's ratio is taken against the floor of its own moment), so
    the chart draws the ratio itself. Where no floor could be timed at all, it draws the steady seconds and says so."""
    from experiments.report import plots

    timed = [r for r in rows if r.get("steady_median_seconds") is not None]
    key = "ratio_to_floor" if any(spread_of(r, "ratio_to_floor") for r in timed) else "steady_median_seconds"
    drawn = [r for r in timed if spread_of(r, key)]
    fig, ax = plots.subplots(figsize=(8, 1.2 + 0.45 * max(1, len(drawn))))
    spreads = [spread_of(r, key) for r in drawn]
    for tier in dict.fromkeys(r.get("tuning") for r in drawn):  # a bar series per tier, for the legend
        mine = [(y, s) for y, (r, s) in enumerate(zip(drawn, spreads)) if r.get("tuning") == tier]
        ax.barh([y for y, _ in mine], [s.median for _, s in mine], height=0.6, capsize=3,
                xerr=[[s.median - s.low if s.has_interval else 0.0 for _, s in mine],
                      [s.high - s.median if s.has_interval else 0.0 for _, s in mine]],
                color=TIER_COLORS.get(tier, "#8c8c8c"), label=tier or "-")
    for y, (r, s) in enumerate(zip(drawn, spreads)):
        seconds = spread_of(r, "steady_median_seconds")
        label = fmt_spread(s) if key == "steady_median_seconds" else f"{fmt_spread(s)}x, {seconds.median:.3f} s"
        ax.text(s.high if s.has_interval else s.median, y, f"  {label}", va="center", fontsize=7)
    right = max([s.high if s.has_interval else s.median for s in spreads]
                + [1.0 if key == "ratio_to_floor" else 1e-3])
    ax.set_xlim(0, right * 1.45)
    if key == "ratio_to_floor":
        pooled = f", pooled over the run: {floor:.3f} s an epoch" if floor else ""
        ax.axvline(1.0, color="#c44e52", linestyle="--", label=f"the floor (1{pooled})")
        ax.set_xlabel("x floor: a round's steady epoch / the floor timed beside it (median over the rounds; "
                      "whiskers: its interval)", fontsize=8)
    else:
        ax.set_xlabel("steady epoch seconds, no floor timed (median over the rounds; whiskers: its interval)",
                      fontsize=8)
    ax.set_yticks(range(len(drawn)))
    ax.set_yticklabels([f"{r['backend']} {r['mode']} {r.get('tuning')}" for r in drawn])
    ax.invert_yaxis()
    if drawn:  # above the axes, between them and the title: inside, it would cover a bar's label
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no job finished", transform=ax.transAxes, ha="center")
        ax.set_xticks([])
        ax.set_xlabel("")
    ax.set_title(title, fontsize=9, pad=22)
    fig.tight_layout()
    return fig
