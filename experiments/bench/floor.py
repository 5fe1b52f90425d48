"""The floor of the bench: the GEMMs of one training step, counted and timed with NumPy's BLAS.

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

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

from backends.contract.threads import thread_environment
from backends.registry import PROJECT_ROOT

BATCH_SIZE = 256  # D2L's
FASHION_MNIST_TRAIN = 60_000  # training examples (used only when no job ran to report its n_train)
FLOOR_ROUNDS = 9  # interleaved timing rounds per GEMM shape
FLOOR_CALLS = 40  # calls per shape per round
BLAS_ENVIRONMENT = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_VERBOSE", "OMP_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


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
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), **thread_environment(threads))
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


def floor_seconds(floor: dict[str, Any], n_train: int, batch: int) -> float:
    """The floor of one epoch over ``n_train`` examples: steps x the measured GEMM time of one step."""
    return n_train / batch * floor["step_seconds"]


if __name__ == "__main__":  # the floor's own process: thread variables set before NumPy is imported
    request = json.loads(sys.stdin.read())
    print(json.dumps(_floor_worker(request["sizes"], request["batch"], request["rounds"], request["calls"])))
