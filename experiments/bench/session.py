"""One batch size of the bench: its rounds, each running every backend x mode x tier (and the noise-off twins) through
the runner in a shuffled order (``experiments.bench.rounds``), with the floor timed beside each job's steady epochs.

Each round is a run folder of its own (``round-<r>/``: its ``epochs.csv``, ``summary.csv``, ``meta.json`` and
``logs/``). ``run_size`` writes, in the size's folder, ``rounds.csv`` (a row per backend x mode x tier x round),
``bench.csv`` (a row per backend x mode x tier: the medians over the rounds with their intervals), ``timings.csv``,
``epochs.csv`` and ``summary.csv`` (every round's, with a ``round`` column), ``meta.json`` and ``bench.png``, and
returns what the scaling fit, the breakdown and ``bench.md`` need; ``bench.md`` is written by the command once the fit
is known.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from backends import registry
from backends.contract.spec import MODES, TUNINGS, ModelSpec
from experiments import catalog
from experiments.running import resume
from experiments.bench.floor import (
    BLAS_ENVIRONMENT, FASHION_MNIST_TRAIN, KERNEL_CHOICE, blas_line, epoch_flops, floor_seconds, own_kernels_floor,
    pool_floors, vector_isa,
)
from experiments.bench.output import write_chart
from experiments.bench.rounds import NOISE_OFF, Floors, job_label, round_order
from experiments.bench.rows import (
    COLUMNS, ROUND_COLUMNS, EventLog, add_gains, aggregate_all, bench_row, unavailable_row,
)
from experiments.running.plan import Variant
from experiments.running.rundir import RunFolder, load_tables, run_metadata
from experiments.running.runner import RunInterrupted, RunOptions, run_experiment

MAIN = "d2l"  # the D2L job's variant; its twin with dropout (0, 0) is NOISE_OFF


@dataclasses.dataclass
class SizeResult:
    batch: int
    out: Path
    rows: list[dict[str, Any]]  # one per backend x mode x tier over the rounds: bench.csv's
    round_rows: list[dict[str, Any]]  # one per backend x mode x tier x round that ran: rounds.csv's
    floor: dict[str, Any] | None  # every measurement of the size pooled
    floor_error: str
    meta: dict[str, Any]
    n_train: int
    sizes: tuple[int, ...]
    noise_off: bool  # whether the noise-off jobs ran
    rounds: int  # planned
    tunings: tuple[str, ...]
    interrupted: RunInterrupted | None = None  # a signal stopped this size's jobs; its rows are those that finished


def write_table(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A table with exactly ``columns``, its header written even without a row (through a temporary file)."""
    temporary = path.with_suffix(".csv.tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def plan_rows(chosen: list[str], modes: tuple[str, ...], tunings: tuple[str, ...], mode_flag: str, device: str,
              threads: int, batch: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Rows that need no worker (a mode the backend lacks, asked for by name; a device it does not declare), one
    per tier, and the (backend, mode) pairs that run."""
    rows: list[dict[str, Any]] = []
    runnable: list[tuple[str, str]] = []
    for name in chosen:
        info = registry.resolve(name)
        for mode in modes:
            reason = None
            if mode not in info.modes:
                if mode_flag == "all":
                    continue
                reason = f"{name} has no {mode} mode (it offers {', '.join(info.modes)})"
            elif device not in info.devices:
                reason = f"{name} has no {device} device (it offers {', '.join(info.devices)})"
            if reason is None:
                runnable.append((name, mode))
            else:
                rows += [unavailable_row(name, mode, t, device, threads, reason, batch, None) for t in tunings]
    return rows, runnable


@dataclasses.dataclass
class _Round:
    number: int
    order: list  # the jobs, in the order they ran
    log: EventLog
    summaries: dict[tuple[str, str, str, str], dict[str, Any]]
    interrupted: RunInterrupted | None


def _run_rounds(args, argv, *, experiment, out: Path, floors: Floors,
                top: RunFolder) -> tuple[list[_Round], RunInterrupted | None]:
    """Every round into ``out/round-<r>/``, its tables copied into ``top`` with a ``round`` column: the rounds that
    ran, and the signal that stopped them, if one did."""
    jobs = experiment.jobs(lambda name: registry.resolve(name).modes)
    rng = random.Random(args.order_seed)
    on_ray = args.executor == "ray"
    if on_ray:
        print("bench on Ray: each job asks for every CPU of a node (and uses them as its threads), so that no "
              "other job shares the node while it is timed", file=sys.stderr)
    done: list[_Round] = []
    try:
        with _StopBetweenRounds():
            for number in range(1, args.rounds + 1):
                done.append(_run_round(args, argv, number, experiment=experiment, order=round_order(jobs, rng),
                                       out=out, floors=floors, top=top, on_ray=on_ray))
                if done[-1].interrupted is not None:
                    return done, done[-1].interrupted
    except _Stopped as stop:  # outside a round's run (the runner handles a signal during one): the rounds that ran
        return done, RunInterrupted(stop.signum, [])
    return done, None


class _Stopped(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopBetweenRounds:
    """SIGINT and SIGTERM outside a round's run (the runner takes them over during it) stop the rounds, so that the
    tables of the rounds that ran are still written."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.saved[signum] = signal.signal(signum, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise _Stopped(signum)

    def __exit__(self, *exc):
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)


def _run_round(args, argv, number: int, *, experiment, order, out: Path, floors: Floors, top: RunFolder,
               on_ray: bool) -> _Round:
    """Round ``number`` into ``out/round-<number>/``, in ``order``; its tables copied into ``top``."""
    where = out / f"round-{number}"
    print(f"bench: round {number} of {args.rounds}: {', '.join(job_label(j) for j in order)}", file=sys.stderr)
    options = RunOptions(data_dir=args.data_dir, out_dir=where, threads=args.threads,
                         job_timeout=args.job_timeout, bench_timing=True, floor_variants=(MAIN,),
                         executor=args.executor, ray_address=args.ray_address, all_cpus_of_node=on_ray)
    decisions = resume.plan(order, where, data_dir=args.data_dir, threads=args.threads, resume=False,
                            force=False)
    log, interrupted = EventLog(), None
    try:
        finished = run_experiment(experiment, options, argv=argv, on_event=log, decisions=decisions)
    except RunInterrupted as stop:  # the tables are still written, for the jobs that finished
        interrupted, finished = stop, stop.rows
    for job in order:
        key = (job.backend, job.train.mode, job.train.tuning, job.variant)
        if job.variant == MAIN and (key in log.floors or key in log.starts):
            floors.record(number, job, log.starts.get(key, {}).get("floor"), log.floors.get(key, []))
    summaries = {(s["backend"], s["mode"], s["tuning"], s["variant"]): s for s in finished}
    tables = {name: [{"round": number, **row} for row in rows] for name, rows in load_tables(where).items()}
    tables["timings"] = [{"round": number, "backend": name, "mode": mode, "tuning": tuning, "variant": variant,
                          **{k: v for k, v in timing.items() if k != "event"}}
                         for (name, mode, tuning, variant), timings in log.timings.items() for timing in timings]
    for name, rows in tables.items():  # each table rewritten once a round
        top.replace_table(name, top.tables.get(name, []) + rows)
    return _Round(number, order, log, summaries, interrupted)


def _round_rows(args, done: list[_Round], runnable, tunings, *, floors: Floors, pooled, batch: int,
                n_train: int, noise_off: bool) -> list[dict[str, Any]]:
    """A row per backend x mode x tier of every round that ran, against the floor timed beside its steady epochs
    (the pooled floor where that failed), with the noise-off twin's time and the round's gain."""
    rows = []
    for r in done:
        position = {job.key: i for i, job in enumerate(r.order, start=1)}
        keys = {(j.backend, j.train.mode, j.train.tuning, j.variant): j for j in r.order}
        for name, mode in runnable:
            for tuning in tunings:
                key = (name, mode, tuning, MAIN)
                job, epochs = keys[key], r.log.epochs.get(key, [])
                n = epochs[0]["n_train"] if epochs else n_train
                beside = floors.beside.get((r.number, job.key))
                floor = beside or pooled
                row = bench_row(backend=name, mode=mode, tuning=tuning, device=args.device, threads=args.threads,
                                summary=r.summaries.get(key), epochs=epochs, timings=r.log.timings.get(key, []),
                                floor=floor_seconds(floor, n, batch) if floor else None, batch=batch,
                                start=r.log.starts.get(key))
                row.update(round=r.number, position=position[job.key],
                           floor_when="beside the job" if beside else ("pooled" if floor else None))
                if floor:
                    row.update(floor_full_seconds=floor_seconds(floor, n, batch, full=True),
                               peak_gflops=floor.get("peak_gflops"), floor_efficiency=floor.get("efficiency"))
                    if row.get("steady_median_seconds") is not None:
                        row["ratio_to_full_floor"] = row["steady_median_seconds"] / row["floor_full_seconds"]
                if r.interrupted is not None and key not in r.summaries:
                    row.update(status="interrupted",
                               error=f"{r.interrupted.signal_name} stopped the bench before this job")
                if noise_off:
                    twin = (name, mode, tuning, NOISE_OFF)
                    off = bench_row(backend=name, mode=mode, tuning=tuning, device=args.device, threads=args.threads,
                                    summary=r.summaries.get(twin), epochs=r.log.epochs.get(twin, []), timings=[],
                                    floor=None, batch=batch)
                    row["noise_off_seconds"] = off.get("steady_median_seconds")
                    if row.get("steady_median_seconds") is not None and row["noise_off_seconds"] is not None:
                        row["noise_seconds"] = row["steady_median_seconds"] - row["noise_off_seconds"]
                rows.append(row)
    add_gains(rows)
    return rows


def run_size(args, argv: list[str], *, chosen: list[str], modes: tuple[str, ...], tunings: tuple[str, ...],
             model: ModelSpec, batch: int, out: Path, noise_off: bool) -> SizeResult:
    """Run ``args.rounds`` rounds of every backend x mode x tier at ``batch`` into ``out`` (with a noise-off twin
    each when ``noise_off``)."""
    top = RunFolder(out)
    sizes = model.layer_sizes
    train = {"epochs": 1 + args.repeats, "batch_size": batch, "device": args.device}
    if args.train_limit is not None:
        train["train_limit"] = args.train_limit
    print(f"bench: {', '.join(chosen)} x {', '.join(modes)} x {', '.join(tunings)} on {args.device}, "
          f"{args.threads} threads, batch {batch}: {args.rounds} round{'s' if args.rounds != 1 else ''} of "
          f"1 warm-up + {args.repeats} steady epochs per job{' (and each with the noise off)' if noise_off else ''}"
          f", order seed {args.order_seed}; results: {out}", file=sys.stderr)
    planned, runnable = plan_rows(chosen, modes, tunings, args.mode, args.device, args.threads, batch)
    floors = Floors(threads=args.threads, sizes=sizes, batch=batch)
    done: list[_Round] = []
    interrupted: RunInterrupted | None = None
    run_names = [n for n in chosen if any(b == n for b, _ in runnable)]
    if run_names:
        experiment = catalog.build("d2l", backends=run_names, modes=modes, tunings=tunings, seeds=(0,),
                                   train_overrides=train,
                                   model_overrides={"hiddens": model.hiddens, "dropouts": model.dropouts})
        variants = (Variant(MAIN),)
        if noise_off:
            variants += (Variant(NOISE_OFF, model={"dropouts": (0.0,) * len(model.hiddens)}),)
        experiment = dataclasses.replace(experiment, variants=variants)
        done, interrupted = _run_rounds(args, argv, experiment=experiment, out=out, floors=floors, top=top)
    first_meta = out / "round-1" / "meta.json"
    if first_meta.exists():
        meta = json.loads(first_meta.read_text())
    else:
        meta = run_metadata(root=registry.PROJECT_ROOT, threads=args.threads, argv=argv, versions={})
        meta.update(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if not floors.any():  # no job ran (or every measurement failed): the floor is measured all the same
        floors.take("after the last job" if done else "with no job to run")
    pooled = pool_floors(floors.measured, floors.labels)
    n_train = next((epochs[0]["n_train"] for r in done for epochs in r.log.epochs.values() if epochs),
                   args.train_limit or FASHION_MNIST_TRAIN)
    own_kernels = None
    if pooled and os.environ.get(KERNEL_CHOICE):
        print(f"floor: once more with {KERNEL_CHOICE} unset (OpenBLAS's own kernels for this CPU) ...",
              file=sys.stderr)
        try:
            own_kernels = own_kernels_floor(pooled, threads=args.threads, sizes=sizes, batch=batch, n_train=n_train)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            print(f"warning: {exc}", file=sys.stderr)
    round_rows = _round_rows(args, done, runnable, tunings, floors=floors, pooled=pooled, batch=batch,
                             n_train=n_train, noise_off=noise_off)
    pooled_epoch = floor_seconds(pooled, n_train, batch) if pooled else None
    rows = aggregate_all(round_rows, args.rounds) + planned
    for row in rows:
        row["hiddens"] = "x".join(map(str, model.hiddens))
        if row.get("floor_seconds") is None and pooled:
            row.update(floor_seconds=pooled_epoch, floor_full_seconds=floor_seconds(pooled, n_train, batch,
                                                                                     full=True))
    for row in round_rows:
        row["hiddens"] = "x".join(map(str, model.hiddens))
    order = {(n, m, t): i for i, (n, m, t) in enumerate((n, m, t) for n in chosen for m in MODES for t in TUNINGS)}
    rows.sort(key=lambda r: order[(r["backend"], r["mode"], r["tuning"])])
    write_table(out / "rounds.csv", round_rows, ROUND_COLUMNS)
    write_table(out / "bench.csv", rows, COLUMNS)
    floor_error = "; ".join(dict.fromkeys(floors.errors))
    meta.update(bench={"rounds": args.rounds, "rounds_run": len(done), "repeats": args.repeats,
                       "epochs_per_job": 1 + args.repeats, "order_seed": args.order_seed,
                       "orders": [[job_label(j) for j in r.order] for r in done], "tunings": list(tunings),
                       "device": args.device, "modes": list(modes), "backends": chosen, "batch_size": batch,
                       "sizes": list(sizes), "n_train": n_train,
                       "steady_statistic": "per round: median of epochs 2..1+repeats; over rounds: median, with the "
                                           "distribution-free interval of the median from two of the rounds "
                                           "(experiments.bench.intervals)",
                       "epoch_flops": epoch_flops(sizes, n_train),
                       "epoch_flops_full": epoch_flops(sizes, n_train, full=True),
                       "floor_seconds": pooled_epoch, "noise_off_jobs": noise_off},
                floor=pooled, floor_error=floor_error or None, floor_own_kernels=own_kernels, threads=args.threads,
                device=args.device, vector_isa=vector_isa(), blas=(pooled or {}).get("blas"),
                blas_line=blas_line(pooled["blas"]) if pooled else None,
                blas_environment={name: os.environ.get(name) for name in BLAS_ENVIRONMENT},
                gemm_libraries={f"{b} {m} {t}": s.get("gemm") for r in done
                                for (b, m, t, v), s in r.log.starts.items() if v == MAIN},
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta["frameworks"] = {**(meta.get("frameworks") or {}),
                          **{r["backend"]: r["framework_version"] for r in rows if r.get("framework_version")}}
    top.write_json("meta.json", meta)
    try:
        (out / "logs").rmdir()  # each round keeps its workers' logs in round-<r>/logs/
    except OSError:
        pass
    title = (f"{'-'.join(map(str, sizes))} MLP, batch {batch}, {n_train:,} examples, threads: {args.threads}, "
             f"{args.device}, {len(done)} round{'s' if len(done) != 1 else ''}, {meta.get('cpu')}")
    write_chart(out / "bench.png", rows, pooled_epoch, title)
    return SizeResult(batch=batch, out=out, rows=rows, round_rows=round_rows, floor=pooled, floor_error=floor_error,
                      meta=meta, n_train=n_train, sizes=tuple(sizes), noise_off=noise_off, rounds=args.rounds,
                      tunings=tuple(tunings), interrupted=interrupted)
