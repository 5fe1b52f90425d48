"""``python harness.py bench``: synchronised timings of every backend x mode side by side, against the machine's floor.

Each backend x mode is one D2L job (the section's model, batch 256, real Fashion-MNIST) with ``1 + repeats`` epochs,
run by the ordinary runner in its own worker process: same data, same batches (one shared order per seed and epoch),
same thread count, set before the framework is imported. Epoch 1 carries compilation and warm-up; the steady epoch
time is the median (and interquartile range) of epochs 2..1+repeats. Every timer is read after the backend's
``synchronize()`` (``backends.base.Stopwatch``).

The floor is measured in the same run, in its own process with the same thread variables as the jobs (set before
NumPy is imported) and with the rest of the environment exactly as the jobs get it (``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` included, when this machine sets them; they are recorded in ``meta.json`` and ``bench.md``):

    floor_seconds = (n_train / batch) x (the sum of the measured times of the GEMMs of one training step)

The GEMMs of one step are the model's own shapes, at the model's own batch (``step_gemms``): per dense layer
``l`` (in_l -> out_l) the forward product X_l W_l (B x in_l @ in_l x out_l), the kernel gradient X_l^T dZ_l
(in_l x B @ B x out_l) and the input gradient dZ_l W_l^T (B x out_l @ out_l x in_l): forward plus backward of every
dense layer, the count issue 8 and ``shared/reference/baselines.md`` use. No framework computes the first layer's input
gradient (the gradient w.r.t. the images), so a backend could in principle run below 1.0x the floor, by at most that
product's share (about a quarter of the step); the per-GEMM table in bench.md shows it. Elementwise work (bias, ReLU, dropout, softmax, the SGD update) is not counted either: the
floor is the dense algebra alone, at the rate this machine's NumPy BLAS reaches on exactly these shapes.

    FLOPs of one step = 2B * sum_l in_l*out_l        (forward)
                      + 2B * sum_l in_l*out_l        (kernel gradients)
                      + 2B * sum_l in_l*out_l        (input gradients)
                      = 3 * forward

For 784-256-256-10 that is 1,612,800 FLOPs per example, 96.8 GFLOP per 60,000-example epoch (the reference note's
96.6 GFLOP is over 234 full batches: its bare loops drop the last partial batch, the harness keeps it).
The floor is the measured time of the products themselves; the rate
(FLOPs / time) is reported for comparison with the note's 185-205 GFLOP/s.

Each GEMM is timed as ``numpy.matmul(a, b, out=c)`` on float32 operands laid out as a framework has them (the
transposed operands are transposed views, which BLAS reads with its transpose flag), in interleaved rounds;
a shape's time is the MEDIAN over the rounds (the best round is recorded too), the same statistic as the jobs'
steady epoch time. The floor is measured before every job and after the last, and the rounds of all measurements
are pooled (``pool_floors``), so that one measurement caught in a slow spell of the machine does not set the floor.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

BATCH_SIZE = 256  # D2L's
FASHION_MNIST_TRAIN = 60_000  # training examples (used only when no job ran to report its n_train)
FLOOR_ROUNDS = 9  # interleaved timing rounds per GEMM shape
FLOOR_CALLS = 40  # calls per shape per round
BLAS_ENVIRONMENT = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_VERBOSE", "OMP_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

COLUMNS = ["backend", "mode", "device", "status", "error", "framework_version", "threads", "import_seconds",
           "data_seconds", "build_seconds", "first_epoch_seconds", "steady_median_seconds", "steady_iqr_seconds",
           "steady_q1_seconds", "steady_q3_seconds", "steady_epochs", "samples_per_second", "eval_seconds",
           "peak_rss_mb", "harness_seconds", "harness_fraction", "order_seconds", "gather_seconds",
           "floor_seconds", "ratio_to_floor", "final_val_acc", "n_train", "batch_size"]


# ---------------------------------------------------------------------------------------------------- the FLOPs


def step_gemms(sizes: Sequence[int], batch: int) -> list[dict[str, Any]]:
    """The matrix products of one training step of the dense stack ``sizes`` (e.g. 784, 256, 256, 10) at ``batch``.

    Each is ``a @ b`` with ``a`` (m x k) and ``b`` (k x n); ``ta``/``tb`` say that the operand is a transposed view
    of the array a framework holds (X^T, W^T)."""
    gemms = []
    layers = list(zip(sizes[:-1], sizes[1:]))
    for l, (fan_in, fan_out) in enumerate(layers, start=1):
        gemms.append(dict(name=f"forward {l}: X{l} W{l}", m=batch, k=fan_in, n=fan_out, ta=False, tb=False))
    for l, (fan_in, fan_out) in reversed(list(enumerate(layers, start=1))):
        gemms.append(dict(name=f"kernel grad {l}: X{l}^T dZ{l}", m=fan_in, k=batch, n=fan_out, ta=True, tb=False))
        gemms.append(dict(name=f"input grad {l}: dZ{l} W{l}^T", m=batch, k=fan_out, n=fan_in, ta=False, tb=True))
    for gemm in gemms:
        gemm["flops"] = 2 * gemm["m"] * gemm["k"] * gemm["n"]
    return gemms


def step_flops(sizes: Sequence[int], batch: int) -> int:
    """FLOPs of one training step, as the formula: forward, kernel gradients and input gradients = 3 x forward."""
    forward = 2 * batch * sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))
    return 3 * forward


def epoch_flops(sizes: Sequence[int], n_train: int) -> int:
    """FLOPs of one training epoch over ``n_train`` examples (every term is linear in the batch size)."""
    return step_flops(sizes, 1) * n_train




# ---------------------------------------------------------------------------------------------------- the floor


def _floor_worker(sizes: Sequence[int], batch: int, rounds: int, calls: int) -> dict[str, Any]:
    """Runs in the floor subprocess, whose thread variables were set before this import of NumPy."""
    import numpy as np

    rng = np.random.default_rng(0)
    gemms = step_gemms(sizes, batch)
    operands = []
    for gemm in gemms:
        m, k, n = gemm["m"], gemm["k"], gemm["n"]
        a = rng.standard_normal((k, m) if gemm["ta"] else (m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if gemm["tb"] else (k, n), dtype=np.float32)
        operands.append((a.T if gemm["ta"] else a, b.T if gemm["tb"] else b, np.empty((m, n), np.float32)))
    for a, b, c in operands:  # warm up: thread pool, caches, page faults
        for _ in range(calls):
            np.matmul(a, b, out=c)
    times: list[list[float]] = [[] for _ in gemms]
    clock = time.perf_counter
    for _ in range(rounds):
        for i, (a, b, c) in enumerate(operands):
            start = clock()
            for _ in range(calls):
                np.matmul(a, b, out=c)
            times[i].append((clock() - start) / calls)
    for gemm, samples in zip(gemms, times):
        gemm["samples"] = samples
    flops = step_flops(sizes, batch)
    assert flops == sum(g["flops"] for g in gemms)
    return {**_summarize(gemms), "rounds": rounds, "calls_per_round": calls, "numpy": np.__version__,
            "blas": _blas_info(np), "environment": {name: os.environ.get(name) for name in BLAS_ENVIRONMENT}}


def _summarize(gemms: list[dict[str, Any]]) -> dict[str, Any]:
    """Each GEMM's median and best over its ``samples`` (seconds per call, one per round), and one step's sums."""
    for gemm in gemms:
        samples = gemm["samples"]
        gemm.update(median_seconds=statistics.median(samples), best_seconds=min(samples),
                    gflops_median=gemm["flops"] / statistics.median(samples) / 1e9)
    step_median = sum(g["median_seconds"] for g in gemms)
    step_best = sum(g["best_seconds"] for g in gemms)
    flops = sum(g["flops"] for g in gemms)
    return {"gemms": gemms, "step_seconds": step_median, "step_seconds_best": step_best, "step_flops": flops,
            "gflops": flops / step_median / 1e9, "gflops_best": flops / step_best / 1e9, "statistic": "median"}


def pool_floors(measurements: Sequence[dict[str, Any] | None], labels: Sequence[str]) -> dict[str, Any] | None:
    """One floor from several measurements of it (None: a measurement that failed): their rounds pooled per GEMM.

    A measurement takes about a second, and on these shared machines one now and then lands in a slow spell (two
    floors of one run here: 0.41 and 0.55 s/epoch, while the jobs around them kept their pace). The jobs' steady
    times are medians over several epochs, which such a spell barely moves; the floor gets the same robustness from
    one measurement before every job and one after the last, pooled: the median over all their rounds, which also
    spans the whole run. Each measurement's own step time is kept (``measurements``) with ``drift``, the spread
    between the slowest and the fastest."""
    taken = [(m, label) for m, label in zip(measurements, labels) if m is not None]
    if not taken:
        return None
    first = taken[0][0]
    pooled = [dict(g, samples=[x for m, _ in taken for x in m["gemms"][i]["samples"]])
              for i, g in enumerate(first["gemms"])]
    floor = {**first, **_summarize(pooled), "rounds": sum(m["rounds"] for m, _ in taken)}
    floor["measurements"] = [{"when": label, "step_seconds": m["step_seconds"]} for m, label in taken]
    steps = [m["step_seconds"] for m, _ in taken]
    floor["drift"] = max(steps) / min(steps) - 1.0
    return floor


def _blas_info(np) -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = threadpool_info()
    except ImportError:
        info["threadpools"] = "threadpoolctl is not installed"
    try:
        config = np.show_config(mode="dicts")
        info["numpy_build"] = config.get("Build Dependencies", config)
    except TypeError:  # numpy < 1.25 has no mode
        info["numpy_build"] = "numpy.show_config(mode='dicts') is not supported by this numpy"
    return info


def blas_line(blas: dict[str, Any]) -> str:
    """One line: the BLAS that NumPy calls, its version, the kernel it picked, and its threads."""
    pools = blas.get("threadpools")
    if isinstance(pools, list):
        parts = [f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture') or '?'} kernels, "
                 f"{p.get('num_threads')} threads)" for p in pools if p.get("user_api") == "blas"]
        if parts:
            return "; ".join(parts)
    build = blas.get("numpy_build")
    if isinstance(build, dict) and isinstance(build.get("blas"), dict):
        return f"{build['blas'].get('name')} {build['blas'].get('version')}"
    return "unknown"


def measure_floor(*, threads: int, sizes: Sequence[int], batch: int, rounds: int = FLOOR_ROUNDS,
                  calls: int = FLOOR_CALLS, timeout: float = 300.0) -> dict[str, Any]:
    """Time the step's GEMMs in a fresh process with the jobs' environment (the runner's thread variables)."""
    import backends
    from backends.worker import thread_environment

    env = dict(os.environ, PYTHONPATH=str(backends.PROJECT_ROOT), **thread_environment(threads))
    request = json.dumps({"sizes": list(sizes), "batch": batch, "rounds": rounds, "calls": calls})
    result = subprocess.run([sys.executable, "-m", "experiments.bench", "--floor-worker"], input=request,
                            capture_output=True, text=True, cwd=backends.PROJECT_ROOT, env=env, timeout=timeout)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the floor measurement failed: {detail}")
    floor = json.loads(result.stdout.strip().splitlines()[-1])
    floor["threads"] = threads
    floor["interpreter"] = sys.executable
    return floor


def floor_seconds(floor: dict[str, Any], n_train: int, batch: int) -> float:
    """The floor of one epoch over ``n_train`` examples: steps x the measured GEMM time of one step."""
    return n_train / batch * floor["step_seconds"]


# ----------------------------------------------------------------------------------------------------- the jobs


class EventLog:
    """Collects each job's events from the runner (its ``on_event`` hook), keyed by (backend, mode)."""

    def __init__(self) -> None:
        self.epochs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.timings: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def __call__(self, job, event: dict[str, Any], process) -> None:
        key = (job.backend, job.train.mode)
        if event.get("event") == "epoch":
            self.epochs.setdefault(key, []).append(event)
        elif event.get("event") == "bench":
            self.timings.setdefault(key, []).append(event)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Median and the 25th/75th percentiles with linear interpolation (NumPy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]

    def at(q: float) -> float:
        position = q * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return statistics.median(ordered), at(0.25), at(0.75)


def harness_parts(epoch: dict[str, Any], timing: dict[str, Any]) -> tuple[float, float]:
    """(harness seconds, wall seconds) of one epoch, both measured in the worker.

    Harness work: generating the epoch's batch order, everything inside the timed epoch but outside
    ``backend.train_epoch`` (building ``EpochBatches``, the timer itself), the batch gathers that the harness's
    ``EpochBatches`` iterators do inside a backend's loop, the divergence check and sending the epoch's row.
    Wall: the timed epoch plus the harness work around it (order, check, row)."""
    around = timing["order_seconds"] + timing["check_seconds"] + timing["emit_seconds"]
    inside = max(0.0, epoch["epoch_seconds"] - timing["train_epoch_seconds"]) + timing["gather_seconds"]
    return around + inside, epoch["epoch_seconds"] + around


def bench_row(*, backend: str, mode: str, device: str, threads: int, summary: dict[str, Any] | None,
              epochs: list[dict[str, Any]], timings: list[dict[str, Any]], floor: float | None,
              batch: int) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": backend, "mode": mode, "device": device, "threads": threads,
                           "batch_size": batch, "floor_seconds": floor}
    summary = summary or {}
    for key in ("status", "error", "framework_version", "import_seconds", "data_seconds", "build_seconds",
                "peak_rss_mb"):
        row[key] = summary.get(key)
    row["status"] = row["status"] or "failed"
    row["error"] = row["error"] or ""
    if epochs:
        row["first_epoch_seconds"] = epochs[0]["epoch_seconds"]
        row["n_train"] = epochs[0]["n_train"]
        row["final_val_acc"] = epochs[-1]["val_acc"]
        row["eval_seconds"] = statistics.median(e["eval_seconds"] for e in epochs)
    steady = epochs[1:]
    if steady:
        median, q1, q3 = _quartiles([e["epoch_seconds"] for e in steady])
        row.update(steady_median_seconds=median, steady_q1_seconds=q1, steady_q3_seconds=q3,
                   steady_iqr_seconds=q3 - q1, steady_epochs=len(steady),
                   samples_per_second=steady[0]["n_train"] / median if median > 0 else None)
        if floor:
            row["ratio_to_floor"] = median / floor
        by_epoch = {t["epoch"]: t for t in timings}
        parts = [(e, by_epoch[e["epoch"]]) for e in steady if e["epoch"] in by_epoch]
        if parts:
            harness = [harness_parts(e, t) for e, t in parts]
            row["harness_seconds"] = statistics.median(h for h, _ in harness)
            row["harness_fraction"] = statistics.median(h / wall for h, wall in harness)
            row["order_seconds"] = statistics.median(t["order_seconds"] for _, t in parts)
            row["gather_seconds"] = statistics.median(t["gather_seconds"] for _, t in parts)
    return row


def unavailable_row(backend: str, mode: str, device: str, threads: int, reason: str, batch: int,
                    floor: float | None) -> dict[str, Any]:
    return {"backend": backend, "mode": mode, "device": device, "threads": threads, "status": "unavailable",
            "error": reason, "framework_version": None, "batch_size": batch, "floor_seconds": floor}


def _no_device(backend: str, device: str, error: str) -> str | None:
    """A job refused by the backend's Capabilities for the device becomes 'unavailable' (see backends/base.py)."""
    if f"cannot run on {device}" in error:
        offers = error.split("it offers", 1)[1].strip() if "it offers" in error else "?"
        return f"{backend} has no {device} device (it offers {offers})"
    return None


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timed rows by steady epoch time, then the rest (failed, unavailable) in their order."""
    timed = [r for r in rows if r.get("steady_median_seconds") is not None]
    return sorted(timed, key=lambda r: r["steady_median_seconds"]) + [r for r in rows if r not in timed]


# ---------------------------------------------------------------------------------------------------- the output


def _fmt(value: Any, spec: str, empty: str = "-") -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return empty
    return format(value, spec)


TABLE = [  # header, key, format
    ("backend", "backend", "s"), ("mode", "mode", "s"), ("steady s", "steady_median_seconds", ".3f"),
    ("IQR s", "steady_iqr_seconds", ".3f"), ("x floor", "ratio_to_floor", ".2f"),
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
        line = [_fmt(row.get(key), spec) for _, key, spec in TABLE]
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
    return (f"CPU: {meta.get('cpu')} ({meta.get('cpu_count')} cores); threads: {meta.get('threads')}; "
            f"device: {meta.get('bench', {}).get('device')}; Python {meta.get('python')}, NumPy {meta.get('numpy')}"
            f"{'; ' + versions if versions else ''}; BLAS: {blas}")


def floor_summary(floor: dict[str, Any] | None, n_train: int, batch: int, sizes: Sequence[int]) -> str:
    if not floor:
        return "floor: not measured"
    steps = n_train / batch
    each = [m["step_seconds"] * steps for m in floor.get("measurements", ())]
    spread = (f"; pooled from {len(each)} measurements between the jobs, {min(each):.3f} to {max(each):.3f} s"
              if len(each) > 1 else "")
    return (f"floor: {floor_seconds(floor, n_train, batch):.3f} s/epoch = {steps:.2f} steps x "
            f"{floor['step_seconds'] * 1e3:.3f} ms of GEMMs per step ({floor['gflops']:.0f} GFLOP/s on the model's "
            f"shapes, median of {floor['rounds']} rounds; {epoch_flops(sizes, n_train) / 1e9:.1f} GFLOP per epoch)"
            + spread)


def write_markdown(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any], floor: dict[str, Any] | None,
                   sizes: Sequence[int], n_train: int, batch: int) -> None:
    bench = meta.get("bench", {})
    lines = [f"# dropbench: benchmark ({'-'.join(map(str, sizes))} MLP, batch {batch}, {n_train:,} training examples, "
             f"{bench.get('repeats')} steady epochs after 1 warm-up epoch per job)", "",
             f"Machine: {machine_line(meta, floor)}", "",
             f"Command: `{meta.get('command')}`; started {meta.get('started')}", "", "## Side by side", "",
             "Sorted by steady epoch time (median over the steady epochs; IQR = 75th - 25th percentile). "
             "`x floor` = steady / floor. `harness` = the harness's own work per steady epoch (batch order, "
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
                  f"Environment: {env}.", "",
                  "Counted: forward and backward of every dense layer (per layer the forward product, the kernel "
                  "gradient and the input gradient: 3x forward, as `baselines.md` counts it); elementwise work is not "
                  f"counted. That is {step_flops(sizes, 1):,} FLOPs per example, "
                  f"{epoch_flops(sizes, n_train) / 1e9:.1f} GFLOP per epoch. No framework computes the first "
                  "layer's input gradient (w.r.t. the images), so a backend could in principle go below 1.0x by that "
                  "product's share (its row below).", "",
                  "| GEMM | shape | MFLOP | median us | best us | GFLOP/s (median) |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for g in floor["gemms"]:
            shape = f"{g['m']}x{g['k']}{'ᵀ' if g['ta'] else ''} @ {g['k']}x{g['n']}{'ᵀ' if g['tb'] else ''}"
            lines.append(f"| {g['name']} | {shape} | {g['flops'] / 1e6:.2f} | {g['median_seconds'] * 1e6:.1f} | "
                         f"{g['best_seconds'] * 1e6:.1f} | {g['gflops_median']:.0f} |")
        lines += ["", f"One step: {floor['step_seconds'] * 1e3:.3f} ms median ({floor['gflops']:.0f} GFLOP/s), "
                      f"{floor['step_seconds_best'] * 1e3:.3f} ms best ({floor['gflops_best']:.0f} GFLOP/s), over "
                      "every measurement. Each measurement (one before each job, one after the last):", "",
                  "| when | floor s/epoch |", "| --- | ---: |"]
        lines += [f"| {m['when']} | {m['step_seconds'] * n_train / batch:.3f} |" for m in floor["measurements"]]
    else:
        lines.append(f"Not measured: {meta.get('floor_error', 'unknown error')}")
    lines += ["", "Files: `bench.csv` (every column), `bench.png`, `meta.json`, `timings.csv` (the harness's "
              "per-epoch timings), `epochs.csv`, `summary.csv`, `logs/`.", ""]
    path.write_text("\n".join(lines))


def write_chart(path: Path, rows: list[dict[str, Any]], floor: float | None, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    timed = [r for r in sort_rows(rows) if r.get("steady_median_seconds") is not None]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * max(1, len(timed))))
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------- command line


def build_parser():
    from experiments.cli import Parser, add_run_options

    parser = Parser(prog="python harness.py bench", description="Time every backend x mode side by side on the D2L "
                    "job (batch 256, real data), each in its own worker, against the machine's BLAS floor.")
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="numpy, torch, jax, tensorflow, mxnet, or all (repeatable; default all, and a backend "
                             "that is not installed gets a row that says so)")
    parser.add_argument("--mode", choices=["eager", "compiled", "all"], default="all", help="(default all)")
    parser.add_argument("--repeats", type=int, default=5, help="steady epochs per job, after one warm-up epoch (5)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="(default cpu)")
    add_run_options(parser, out_default="results/bench-<timestamp>")  # --threads also sets the floor's threads
    return parser


def choose(requested: list[str] | None) -> list[str]:
    """Backends to bench: 'all' is every registered backend, installed or not (the missing ones get rows)."""
    import backends

    chosen: list[str] = []
    for name in requested or ["all"]:
        names = list(backends.REGISTRY) if name.lower() == "all" else [backends.resolve(name).name]
        chosen.extend(n for n in names if n not in chosen)
    return chosen


def run(args: argparse.Namespace, argv: list[str]) -> int:
    import backends
    from experiments import catalog, data
    from experiments.cli import UsageError
    from experiments.report import RunFolder
    from experiments.runner import RunOptions, run_experiment
    from experiments.spec import ModelSpec

    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.job_timeout <= 0:
        raise UsageError(f"--job-timeout must be positive, got {args.job_timeout}")
    chosen = choose(args.backend)
    modes = ("eager", "compiled") if args.mode == "all" else (args.mode,)
    train = {"epochs": 1 + args.repeats, "batch_size": BATCH_SIZE, "device": args.device}
    if args.train_limit is not None:
        train["train_limit"] = args.train_limit
    model = ModelSpec()
    sizes, batch = model.layer_sizes, BATCH_SIZE
    data_dir = data.locate(args.data_dir)
    out = args.out or Path("results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = RunFolder(out)
    print(f"bench: {', '.join(chosen)} x {', '.join(modes)} on {args.device}, {args.threads} threads, "
          f"1 warm-up + {args.repeats} steady epochs per job; results: {out}", file=sys.stderr)

    # Rows that need no worker: a mode the backend does not have (asked for by name), a device it does not declare.
    rows: list[dict[str, Any]] = []
    runnable: list[tuple[str, str]] = []
    for name in chosen:
        info = backends.resolve(name)
        for mode in modes:
            devices = getattr(info, "devices", None)  # if the registry declares devices; else the worker decides
            if mode not in info.modes:
                if args.mode != "all":
                    rows.append(unavailable_row(name, mode, args.device, args.threads,
                                                f"{name} has no {mode} mode (it offers {', '.join(info.modes)})",
                                                batch, None))
            elif devices is not None and args.device not in devices:
                rows.append(unavailable_row(name, mode, args.device, args.threads,
                                            f"{name} has no {args.device} device (it offers {', '.join(devices)})",
                                            batch, None))
            else:
                runnable.append((name, mode))

    floor_error = ""

    def timed_floor(when: str) -> dict[str, Any] | None:
        nonlocal floor_error
        print(f"floor: timing the step's GEMMs with NumPy's BLAS ({args.threads} threads), {when} ...",
              file=sys.stderr)
        try:
            return measure_floor(threads=args.threads, sizes=sizes, batch=batch)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            floor_error = str(exc)
            print(f"warning: {floor_error}", file=sys.stderr)
            return None

    measured: list[dict[str, Any] | None] = []  # one before each job and one after the last
    labels: list[str] = []

    def between_jobs(job) -> None:
        labels.append(f"before {job.backend} {job.train.mode}" if job is not None else "after the last job")
        measured.append(timed_floor(labels[-1]))

    log = EventLog()
    summaries: dict[tuple[str, str], dict[str, Any]] = {}
    meta: dict[str, Any] = {}
    run_names = [n for n in chosen if any(b == n for b, _ in runnable)]
    if run_names:
        experiment = catalog.build("d2l", backends=run_names, modes=modes, seeds=(0,), train_overrides=train)
        options = RunOptions(data_dir=data_dir, out_dir=out, threads=args.threads, job_timeout=args.job_timeout,
                             bench_timing=True)
        for summary in run_experiment(experiment, options, argv=argv, on_event=log, between_jobs=between_jobs):
            summaries[(summary["backend"], summary["mode"])] = summary
        meta = json.loads((out / "meta.json").read_text())
    else:
        from experiments.report import run_metadata

        meta = run_metadata(root=backends.PROJECT_ROOT, threads=args.threads, argv=argv, versions={})
        meta.update(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        between_jobs(None)

    floor = pool_floors(measured, labels)
    n_train = next((epochs[0]["n_train"] for epochs in log.epochs.values() if epochs),
                   args.train_limit or FASHION_MNIST_TRAIN)
    floor_epoch = floor_seconds(floor, n_train, batch) if floor else None
    for name, mode in runnable:
        summary = summaries.get((name, mode))
        row = bench_row(backend=name, mode=mode, device=args.device, threads=args.threads, summary=summary,
                        epochs=log.epochs.get((name, mode), []), timings=log.timings.get((name, mode), []),
                        floor=floor_epoch, batch=batch)
        reason = _no_device(name, args.device, row["error"]) if row["status"] == "failed" else None
        if reason:
            row.update(status="unavailable", error=reason)
        rows.append(row)
    for row in rows:
        row["floor_seconds"] = floor_epoch
    order = {(n, m): i for i, (n, m) in enumerate((n, m) for n in chosen for m in ("eager", "compiled"))}
    rows.sort(key=lambda r: order[(r["backend"], r["mode"])])

    for row in rows:
        folder.append("bench", {c: row.get(c) for c in COLUMNS})
    for (name, mode), timings in log.timings.items():
        for timing in timings:
            folder.append("timings", {"backend": name, "mode": mode, **{k: v for k, v in timing.items()
                                                                         if k != "event"}})
    meta.update(bench={"repeats": args.repeats, "epochs_per_job": 1 + args.repeats, "device": args.device,
                       "modes": list(modes), "backends": chosen, "batch_size": batch, "sizes": list(sizes),
                       "n_train": n_train, "steady_statistic": "median of epochs 2..1+repeats",
                       "epoch_flops": epoch_flops(sizes, n_train), "floor_seconds": floor_epoch},
                floor=floor, floor_error=floor_error or None, threads=args.threads, device=args.device,
                blas=(floor or {}).get("blas"), blas_line=blas_line(floor["blas"]) if floor else None,
                blas_environment={name: os.environ.get(name) for name in BLAS_ENVIRONMENT},
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta["frameworks"] = {**(meta.get("frameworks") or {}),
                          **{r["backend"]: r["framework_version"] for r in rows if r.get("framework_version")}}
    folder.write_json("meta.json", meta)
    write_markdown(out / "bench.md", rows, meta, floor, sizes, n_train, batch)
    title = (f"{'-'.join(map(str, sizes))} MLP, batch {batch}, {n_train:,} examples, threads: {args.threads}, "
             f"{args.device}")
    charted = write_chart(out / "bench.png", rows, floor_epoch, title)

    line = floor_summary(floor, n_train, batch, sizes) if floor else f"floor: not measured ({floor_error})"
    print()
    print(console_table(rows, line))
    print(f"machine: {machine_line(meta, floor)}")
    print(f"\nresults in {out}/ (bench.csv, bench.md{', bench.png' if charted else ''}, meta.json)")
    return 0 if any(row["status"] == "ok" for row in rows) else 1


def main(argv: list[str] | None = None) -> int:
    from experiments.cli import as_command

    argv = list(sys.argv[1:] if argv is None else argv)
    return as_command(lambda: run(build_parser().parse_args(argv), ["harness.py", "bench", *argv]))


if __name__ == "__main__":
    if sys.argv[1:] == ["--floor-worker"]:
        request = json.loads(sys.stdin.read())
        print(json.dumps(_floor_worker(request["sizes"], request["batch"], request["rounds"], request["calls"])))
        sys.exit(0)
    sys.exit(main())
