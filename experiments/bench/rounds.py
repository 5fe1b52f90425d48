"""The bench's rounds: the order a round runs its jobs in, and the floor timed beside each job's steady epochs.

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

from experiments.bench.floor import floor_from_passes, measure_floor
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
    """The floor of each job of a round, timed beside its steady epochs by its worker's floor process
    (``experiments.bench.floor_beside``; none beside a noise-off twin: no ratio is taken of it), kept by
    (round, job key), with every measurement in order for the pooled floor. Where no job timed one (no job ran, or
    every floor process failed), the bench takes one measurement of its own in a fresh process (``take``)."""

    def __init__(self, *, threads: int, sizes: Sequence[int], batch: int,
                 measure: Callable[..., dict[str, Any]] = measure_floor) -> None:
        self.threads, self.sizes, self.batch, self.measure = threads, tuple(sizes), batch, measure
        self.beside: dict[tuple[int, str], dict[str, Any] | None] = {}
        self.measured: list[dict[str, Any] | None] = []
        self.labels: list[str] = []
        self.errors: list[str] = []

    def record(self, round_: int, job: Job, opened: dict[str, Any] | None, passes: Sequence[dict[str, Any]]) -> None:
        """The floor of ``job`` in round ``round_`` from its worker's ``floor`` events (``passes``) and what its
        floor process reported when it opened (``opened``, in the job's ``start`` event)."""
        opened = opened or {}
        errors = [e for e in [opened.get("error")] + [p.get("error") for p in passes] if e]
        floor = floor_from_passes(self.sizes, self.batch, opened, [p["samples"] for p in passes if "samples" in p])
        if floor is not None:
            floor["threads"] = self.threads
        for error in dict.fromkeys(errors):
            self.errors.append(error)
            print(f"warning: round {round_}, {job_label(job)}: {error}", file=sys.stderr)
        self.beside[(round_, job.key)] = floor
        self.measured.append(floor)
        self.labels.append(f"round {round_}, beside {job_label(job)}")

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

    def any(self) -> bool:
        return any(m is not None for m in self.measured)
