"""The floor of the bench: the GEMMs a training step needs, counted and timed with NumPy's BLAS, and the peak.

The floor is measured in the same run, in its own process with the same thread variables as the jobs (set before
NumPy is imported) and with the rest of the environment exactly as the jobs get it (``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` included, when this machine sets them; they are recorded in ``meta.json`` and ``bench.md``):

    floor_seconds = (n_train / batch) x (the sum of the measured times of the GEMMs a training step needs)

The GEMMs of one step are the model's own shapes, at the job's batch (``step_gemms``): per dense layer ``l``
(in_l -> out_l) the forward product X_l W_l (B x in_l @ in_l x out_l), the kernel gradient X_l^T dZ_l
(in_l x B @ B x out_l) and the input gradient dZ_l W_l^T (B x out_l @ out_l x in_l), except the first layer's: the
gradient with respect to the images feeds nothing, and no framework computes it. That is the *necessary* floor
(``step_seconds``, ``ratio_to_floor``). The old count of all nine products (forward plus backward of every layer,
3 x forward, the count of issue 8 and ``shared/reference/baselines.md``) is kept as ``step_seconds_full``
(``floor_full_seconds``, ``ratio_to_full_floor``): it flattered every backend by the first input gradient's share.

    necessary FLOPs of one step = 3 x 2B sum_l in_l*out_l - 2B in_1*out_1
    784-256-256-10:  1,211,392 FLOPs per example (72.7 GFLOP per 60,000-example epoch); the full count 1,612,800

Elementwise work (bias, ReLU, dropout, softmax, the SGD update) is not counted: the floor is the dense algebra
alone, at the rate this machine's NumPy BLAS reaches on exactly these shapes. Each GEMM is timed as
``numpy.matmul(a, b, out=c)`` on float32 operands laid out as a framework has them (the transposed operands are
transposed views, which BLAS reads with its transpose flag), in interleaved timing rounds; a shape's time is the
MEDIAN over the rounds (the best is recorded too), the statistic of the jobs' steady epoch time.

In a bench the floor is timed beside every job's steady epochs: the job's worker keeps a floor process of its own
(``serve``, ``experiments.bench.floor_beside``) that times one pass of ``PASS_ROUNDS`` rounds right before each
steady epoch and one after the last, while the job waits; the job's floor pools its passes
(``floor_from_passes``), and its ratio is taken against it (the bench's rounds, ``experiments.bench.rounds``). The
measurements of all jobs are also pooled (``pool_floors``) into the run's floor. A floor of its own, in a fresh
process (``measure_floor``, ``FLOOR_ROUNDS`` rounds), is measured only where no job timed one.

The same process times a large square float32 product (``PEAK_SIZE``) as the machine's peak GEMM rate
(``peak_gflops``, median over the pooled calls); the floor's efficiency is its rate over that peak.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from backends.contract import held_operand_shapes
from backends.contract.threads import thread_environment
from backends.registry import PROJECT_ROOT

BATCH_SIZE = 256  # D2L's
FASHION_MNIST_TRAIN = 60_000  # training examples (used only when no job ran to report its n_train)
FLOOR_ROUNDS = 9  # interleaved timing rounds per GEMM shape
FLOOR_CALLS = 40  # calls per shape per round
PEAK_SIZE = 2048  # the square product timed as the machine's peak (17 GFLOP a call)
PEAK_CALLS = 3  # timed calls per measurement, after one warm-up call
PASS_ROUNDS = 3  # timing rounds per GEMM in one pass beside a job's epoch
PASS_CALLS = 20  # calls per shape per round of such a pass
PASS_WARM_UP_CALLS = 5  # untimed calls per shape before a pass: its threads slept while the job trained
PARK_SECONDS = 0.25  # idle time on each side of a pass, so that neither process's thread pool still spins
BLAS_ENVIRONMENT = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_VERBOSE", "OMP_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def step_gemms(sizes: Sequence[int], batch: int) -> list[dict[str, Any]]:
    """All nine (for three layers) matrix products of one training step of the dense stack ``sizes`` at ``batch``.

    Each is ``a @ b`` with ``a`` (m x k) and ``b`` (k x n); ``ta``/``tb`` say that the operand is a transposed view
    of the array a framework holds (X^T, W^T); ``necessary`` is False for the first layer's input gradient only."""
    gemms = []
    layers = list(zip(sizes[:-1], sizes[1:]))
    for l, (fan_in, fan_out) in enumerate(layers, start=1):
        gemms.append(dict(name=f"forward {l}: X{l} W{l}", m=batch, k=fan_in, n=fan_out, ta=False, tb=False))
    for l, (fan_in, fan_out) in reversed(list(enumerate(layers, start=1))):
        gemms.append(dict(name=f"kernel grad {l}: X{l}^T dZ{l}", m=fan_in, k=batch, n=fan_out, ta=True, tb=False))
        gemms.append(dict(name=f"input grad {l}: dZ{l} W{l}^T", m=batch, k=fan_out, n=fan_in, ta=False, tb=True,
                          necessary=l > 1))
    for gemm in gemms:
        gemm["flops"] = 2 * gemm["m"] * gemm["k"] * gemm["n"]
        gemm.setdefault("necessary", True)
    return gemms


def step_flops(sizes: Sequence[int], batch: int, *, full: bool = False) -> int:
    """FLOPs of one training step, as the formula: 3 x forward, less the first layer's input gradient unless
    ``full`` (the old count)."""
    forward = 2 * batch * sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))
    return 3 * forward if full else 3 * forward - 2 * batch * sizes[0] * sizes[1]


def epoch_flops(sizes: Sequence[int], n_train: int, *, full: bool = False) -> int:
    """FLOPs of one training epoch over ``n_train`` examples (every term is linear in the batch size)."""
    return step_flops(sizes, 1, full=full) * n_train


def _operands(np, sizes: Sequence[int], batch: int) -> tuple[list[dict[str, Any]], list[tuple[Any, Any, Any]]]:
    """The step's GEMMs and, for each, its operands laid out as a framework holds them, and its output."""
    rng = np.random.default_rng(0)
    gemms = step_gemms(sizes, batch)
    operands = []
    for gemm in gemms:
        a, b = (rng.standard_normal(shape, dtype=np.float32) for shape in held_operand_shapes(gemm))
        operands.append((a.T if gemm["ta"] else a, b.T if gemm["tb"] else b,
                         np.empty((gemm["m"], gemm["n"]), np.float32)))
    return gemms, operands


def _timing_passes(np, operands, rounds: int, calls: int, warm_up_calls: int) -> list[list[float]]:
    """Seconds per call of each GEMM, one sample per round, after ``warm_up_calls`` untimed calls of each (the
    thread pool, the caches, page faults)."""
    for a, b, c in operands:
        for _ in range(warm_up_calls):
            np.matmul(a, b, out=c)
    times: list[list[float]] = [[] for _ in operands]
    clock = time.perf_counter
    for _ in range(rounds):
        for i, (a, b, c) in enumerate(operands):
            start = clock()
            for _ in range(calls):
                np.matmul(a, b, out=c)
            times[i].append((clock() - start) / calls)
    return times


def _floor_worker(sizes: Sequence[int], batch: int, rounds: int, calls: int) -> dict[str, Any]:
    """Runs in the floor subprocess, whose thread variables were set before this import of NumPy."""
    import numpy as np

    gemms, operands = _operands(np, sizes, batch)
    for gemm, samples in zip(gemms, _timing_passes(np, operands, rounds, calls, calls)):
        gemm["samples"] = samples
    assert step_flops(sizes, batch) == sum(g["flops"] for g in gemms if g["necessary"])
    return {**_summarize(gemms, _peak_samples(np)), "rounds": rounds, "calls_per_round": calls,
            **_library(np, sizes, batch)}


def _library(np, sizes: Sequence[int], batch: int) -> dict[str, Any]:
    return {"numpy": np.__version__, "blas": _blas_info(np), "batch": batch, "sizes": list(sizes),
            "environment": {name: os.environ.get(name) for name in BLAS_ENVIRONMENT}}


def _peak_samples(np, size: int = PEAK_SIZE, calls: int = PEAK_CALLS) -> list[float]:
    """Seconds per call of a square float32 product of ``size``: the peak rate this BLAS reaches on this machine."""
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    c = np.empty((size, size), np.float32)
    np.matmul(a, b, out=c)  # warm-up
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        samples.append(time.perf_counter() - start)
    return [2.0 * size ** 3 / t for t in samples]


def _summarize(gemms: list[dict[str, Any]], peak_rates: Sequence[float] = ()) -> dict[str, Any]:
    """Each GEMM's median and best over its ``samples`` (seconds per call, one per round), one step's sums (the
    necessary GEMMs, and all of them as ``*_full``), and the peak (median of ``peak_rates``, FLOP/s)."""
    for gemm in gemms:
        samples = gemm["samples"]
        gemm.update(median_seconds=statistics.median(samples), best_seconds=min(samples),
                    gflops_median=gemm["flops"] / statistics.median(samples) / 1e9)
    needed = [g for g in gemms if g.get("necessary", True)]
    step_median = sum(g["median_seconds"] for g in needed)
    step_best = sum(g["best_seconds"] for g in needed)
    flops = sum(g["flops"] for g in needed)
    full_median = sum(g["median_seconds"] for g in gemms)
    full_flops = sum(g["flops"] for g in gemms)
    summary = {"gemms": gemms, "step_seconds": step_median, "step_seconds_best": step_best, "step_flops": flops,
               "gflops": flops / step_median / 1e9, "gflops_best": flops / step_best / 1e9, "statistic": "median",
               "step_seconds_full": full_median, "step_flops_full": full_flops,
               "gflops_full": full_flops / full_median / 1e9, "peak_samples": list(peak_rates)}
    if peak_rates:
        summary["peak_gflops"] = statistics.median(peak_rates) / 1e9
        summary["peak_gflops_best"] = max(peak_rates) / 1e9
        summary["efficiency"] = summary["gflops"] / summary["peak_gflops"]
    return summary


def pool_floors(measurements: Sequence[dict[str, Any] | None], labels: Sequence[str]) -> dict[str, Any] | None:
    """One floor from several measurements of it (None: a measurement that failed): their timing rounds pooled per
    GEMM.

    Each job's ratio is taken against the floor timed beside it (``experiments.bench.rounds``); this pooled
    floor, the median over every measurement's passes, spans the whole run: ``bench.md``'s floor section, the
    fallback of a job whose own measurement failed, and the machine's drift. Each measurement's own step time is
    kept (``measurements``) with ``drift``, the spread between the slowest and the fastest."""
    taken = [(m, label) for m, label in zip(measurements, labels) if m is not None]
    if not taken:
        return None
    first = taken[0][0]
    pooled = [dict(g, samples=[x for m, _ in taken for x in m["gemms"][i]["samples"]])
              for i, g in enumerate(first["gemms"])]
    peaks = [x for m, _ in taken for x in m.get("peak_samples", ())]
    floor = {**first, **_summarize(pooled, peaks), "rounds": sum(m["rounds"] for m, _ in taken)}
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
                  calls: int = FLOOR_CALLS, timeout: float = 300.0, unset: Sequence[str] = ()) -> dict[str, Any]:
    """Time the step's GEMMs in a fresh process with the jobs' environment (the runner's thread variables), less
    the variables named in ``unset``."""
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env.update(PYTHONPATH=str(PROJECT_ROOT), **thread_environment(threads))
    request = json.dumps({"sizes": list(sizes), "batch": batch, "rounds": rounds, "calls": calls})
    result = subprocess.run([sys.executable, "-m", "experiments.bench.floor"], input=request,
                            capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=timeout)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the floor measurement failed: {detail}")
    floor = json.loads(result.stdout.strip().splitlines()[-1])
    floor["threads"] = threads
    floor["interpreter"] = sys.executable
    return floor


KERNEL_CHOICE = "OPENBLAS_CORETYPE"  # OpenBLAS's kernels by name instead of its own choice for the CPU


def own_kernels_floor(floor: dict[str, Any], *, threads: int, sizes: Sequence[int], batch: int,
                      n_train: int) -> dict[str, Any] | None:
    """Where this environment sets ``KERNEL_CHOICE``, the floor once more with it unset, OpenBLAS choosing its
    kernels for this CPU: how far the environment's choice holds the floor (and NumPy's BLAS) from what the
    machine's own kernels reach. None where the variable is not set.

    Why: the jobs' NumPy runs the environment's kernels, so the floor keeps them; but a framework with its own GEMM
    library (oneDNN, XLA's) picks its kernels from the CPU, and where the named kernels are narrower than the CPU's
    (Haswell's AVX2 on an AVX-512 machine) it beats that floor by the difference, not by doing less work."""
    chosen = os.environ.get(KERNEL_CHOICE)
    if not chosen:
        return None
    own = measure_floor(threads=threads, sizes=sizes, batch=batch, unset=(KERNEL_CHOICE,))
    own_seconds = floor_seconds(own, n_train, batch)
    return {"unset": KERNEL_CHOICE, "set_to": chosen, "floor_seconds": own_seconds, "gflops": own["gflops"],
            "peak_gflops": own.get("peak_gflops"), "blas_line": blas_line(own["blas"]),
            "environment": own["environment"], "ratio_to_floor": own_seconds / floor_seconds(floor, n_train, batch)}


def floor_seconds(floor: dict[str, Any], n_train: int, batch: int, *, full: bool = False) -> float:
    """The floor of one epoch over ``n_train`` examples: steps x the measured time of one step's necessary GEMMs
    (all nine with ``full``)."""
    return n_train / batch * floor["step_seconds_full" if full else "step_seconds"]


def vector_isa(cpuinfo: str | None = None) -> str:
    """The widest x86 vector extension the CPU reports (/proc/cpuinfo flags): AVX-512, AVX2, AVX, SSE; else ?."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
                  if line.startswith(("flags", "Features"))), set())
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse2", "SSE2"),
                       ("asimd", "NEON (ASIMD)")):
        if flag in flags:
            return name
    return "unknown"


def floor_from_passes(sizes: Sequence[int], batch: int, opened: dict[str, Any],
                      passes: Sequence[Sequence[Sequence[float]]]) -> dict[str, Any] | None:
    """One job's floor from the passes its floor process timed beside its steady epochs: each GEMM's samples pooled
    over the passes, the peak from ``opened`` (what the process reported when it opened); None without a pass."""
    if not passes:
        return None
    gemms = step_gemms(sizes, batch)
    for i, gemm in enumerate(gemms):
        gemm["samples"] = [x for samples in passes for x in samples[i]]
    library = {name: opened.get(name) for name in ("numpy", "blas", "environment", "interpreter")}
    return {**_summarize(gemms, opened.get("peak_samples") or ()), "rounds": PASS_ROUNDS * len(passes),
            "calls_per_round": PASS_CALLS, "passes": len(passes), "batch": batch, "sizes": list(sizes), **library}


def serve(lines, write) -> None:
    """The floor's process beside one job (``--serve``), started by the job's worker under this project's own
    interpreter and kept for the job's life: the first line names the shapes; then each line asks for ``peak`` or a
    ``pass``, and each reply is one JSON object. The worker waits while a pass runs, and this process waits (on its
    input) while the job trains: no timing ever shares the machine with the other. A pass begins and ends with
    ``PARK_SECONDS`` of idleness, so that the thread pool of whichever process ran last has stopped spinning
    before the other's timing starts."""
    import numpy as np

    request = json.loads(next(lines))
    sizes, batch = request["sizes"], request["batch"]
    _, operands = _operands(np, sizes, batch)
    write({**_library(np, sizes, batch), "interpreter": sys.executable})
    for line in lines:
        time.sleep(PARK_SECONDS)
        if line.strip() == "peak":
            reply: dict[str, Any] = {"peak_samples": _peak_samples(np)}
        elif line.strip() == "pass":
            reply = {"samples": _timing_passes(np, operands, PASS_ROUNDS, PASS_CALLS, PASS_WARM_UP_CALLS)}
        else:
            reply = {"error": f"unknown request {line.strip()!r}"}
        time.sleep(PARK_SECONDS)
        write(reply)


if __name__ == "__main__":  # the floor's own process: thread variables set before NumPy is imported
    if sys.argv[1:] == ["--serve"]:
        from experiments.running.parent import exit_with_parent

        exit_with_parent(os.getppid())  # a floor process whose worker is gone exits instead of timing on

        def _write(reply: dict[str, Any]) -> None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

        serve(iter(sys.stdin.readline, ""), _write)
    else:
        request = json.loads(sys.stdin.read())
        print(json.dumps(_floor_worker(request["sizes"], request["batch"], request["rounds"], request["calls"])))
