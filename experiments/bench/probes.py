"""The bench's measurements inside the worker (``bench_timing`` jobs only): the time the harness's own batching
takes within a backend's loop, and the probes of a backend's GEMM library, its rate on the floor's products and its
noise draws. They run beside the backend in the worker process, under the backend's interpreter (the MXNet venv's
too), so NumPy and the standard library only; ``experiments.running.worker`` calls them."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from backends.contract import EpochBatches
from experiments.bench.floor import step_gemms


@dataclasses.dataclass(frozen=True)
class TimedEpochBatches(EpochBatches):
    """``EpochBatches`` that add up the time spent in their own iterators (slicing the order, gathering ``x[idx]``,
    ``y[idx]``): the harness's batching work that runs inside a backend's loop (bench runs only)."""

    spent: list = dataclasses.field(default_factory=lambda: [0.0], repr=False, compare=False)

    def indices(self):
        clock, spent = time.perf_counter, self.spent
        start = clock()
        for idx in EpochBatches.indices(self):
            spent[0] += clock() - start
            yield idx
            start = clock()
        spent[0] += clock() - start

    def __iter__(self):
        clock, spent = time.perf_counter, self.spent
        start = clock()
        for idx in EpochBatches.indices(self):
            batch = self.x[idx], self.y[idx]
            spent[0] += clock() - start
            yield batch
            start = clock()
        spent[0] += clock() - start


def median_call_seconds(call, calls: int = 30, warmup: int = 3) -> float:
    """The median wall time of ``calls`` timed calls of ``call`` (which waits for its own work), after ``warmup``."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(calls):
        clock = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - clock)
    return sorted(seconds)[len(seconds) // 2]


PROBE_ROUNDS = 16  # rounds of a GEMM probe per timed call: a compiled program's call and output buffers, spread thin


def products_seconds(probes, backend, products) -> float | None:
    """The median time of one round of ``products`` through the backend's own matmul (its ``probes``'
    ``gemm_step_probe``, 16 rounds a timed call); None where the backend does not say."""
    probe = probes.gemm_step_probe(backend, products=products, rounds=PROBE_ROUNDS)
    return None if probe is None else median_call_seconds(probe, calls=10) / PROBE_ROUNDS


def gemm_rate(probes, backend, m: int, k: int, n: int) -> dict[str, Any] | None:
    """The library a backend's float32 matmul runs and the rate it reaches on the first layer's forward product
    (m x k @ k x n) through the framework (bench runs); None where the backend does not say."""
    library = probes.gemm_library(backend, m=m, k=k, n=n)
    seconds = products_seconds(probes, backend, [{"m": m, "k": k, "n": n, "ta": False, "tb": False}])
    if library is None or seconds is None:
        return None
    return {"library": library, "shape": [m, k, n], "seconds": seconds, "gflops": 2.0 * m * k * n / seconds / 1e9}


def gemm_step_rate(probes, backend, sizes, batch: int) -> dict[str, Any] | None:
    """One training step's necessary GEMMs (the floor's products) through the backend's own matmul
    (``gemm_step_probe``; bench runs): the median time of a round of them all, one after another; None where the
    backend does not say."""
    products = [g for g in step_gemms(sizes, batch) if g["necessary"]]
    seconds = products_seconds(probes, backend, products)
    if seconds is None:
        return None
    flops = sum(g["flops"] for g in products)
    return {"seconds": seconds, "products": len(products), "flops": flops, "gflops": flops / seconds / 1e9}


def noise_rate(probes, backend, batch: int) -> dict[str, Any] | None:
    """What draws a backend's dropout and the time one step's draws take alone (``noise_probe``; bench runs);
    None where the backend does not say."""
    probe = probes.noise_probe(backend, batch_size=batch)
    if probe is None:
        return None
    library, draw = probe
    return {"library": library, "seconds": median_call_seconds(draw)}
