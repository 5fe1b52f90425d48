"""The bench's rounds: the order a round runs its jobs in, and the floor measured right before each job.

A round runs every selected backend x mode x tier once (each job in a fresh worker process, as every round does),
with its noise-off twin where the breakdown needs one. The order is shuffled per round from a recorded seed, in
blocks: the jobs of one backend x mode (its two tiers and their noise-off twins) run back to back in a shuffled
order, and the blocks themselves are shuffled. The gain (stock / tuned) and the noise's cost (on / off) are ratios
and differences taken within a round, so the jobs they compare run minutes apart at most in a fully shuffled round;
in a block they run one after another, under the same load of a shared machine, and no tier, variant or backend
holds a fixed place.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from typing import Any, Callable, Sequence

from experiments.bench.floor import measure_floor
from experiments.running.plan import Job

NOISE_OFF = "noise-off"  # the variant with dropout (0, 0), for the breakdown's noise


def round_order(jobs: Sequence[Job], rng: random.Random) -> list[Job]:
    """``jobs`` in one round's order: blocks of one backend x mode, each block's jobs shuffled, the blocks
    shuffled."""
    blocks: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        blocks.setdefault((job.backend, job.train.mode), []).append(job)
    keys = list(blocks)
    rng.shuffle(keys)
    order: list[Job] = []
    for key in keys:
        block = list(blocks[key])
        rng.shuffle(block)
        order.extend(block)
    return order


def job_label(job: Job) -> str:
    """``numpy eager stock`` (``... noise off`` for a twin): a job's name in the tables and the recorded orders."""
    return (f"{job.backend} {job.train.mode} {job.train.tuning}"
            f"{' noise off' if job.variant == NOISE_OFF else ''}")


class Floors:
    """The floor measured right before each job of a round (none before a noise-off twin: no ratio is taken of it),
    kept by (round, job key), with every measurement in order for the pooled floor."""

    def __init__(self, *, threads: int, sizes: Sequence[int], batch: int,
                 measure: Callable[..., dict[str, Any]] = measure_floor) -> None:
        self.threads, self.sizes, self.batch, self.measure = threads, tuple(sizes), batch, measure
        self.beside: dict[tuple[int, str], dict[str, Any] | None] = {}
        self.measured: list[dict[str, Any] | None] = []
        self.labels: list[str] = []
        self.errors: list[str] = []

    def take(self, label: str) -> dict[str, Any] | None:
        print(f"floor: timing the step's GEMMs with NumPy's BLAS ({self.threads} threads, batch {self.batch}), "
              f"{label} ...", file=sys.stderr)
        try:
            floor = self.measure(threads=self.threads, sizes=self.sizes, batch=self.batch)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            self.errors.append(str(exc))
            print(f"warning: {exc}", file=sys.stderr)
            floor = None
        self.measured.append(floor)
        self.labels.append(label)
        return floor

    def hook(self, round_: int) -> Callable[[Job | None], None]:
        """The runner's ``between_jobs`` for round ``round_``."""
        def between_jobs(job: Job | None) -> None:
            if job is not None and job.variant != NOISE_OFF:
                self.beside[(round_, job.key)] = self.take(f"round {round_}, before {job_label(job)}")
        return between_jobs

    def any(self) -> bool:
        return any(m is not None for m in self.measured)
