"""One batch size of the bench: every backend x mode (and its noise-off twin) run by the runner, the floor between.

``run_size`` writes ``bench.csv``, ``timings.csv``, ``meta.json`` and ``bench.png`` into its folder (the jobs' own
``epochs.csv``, ``summary.csv`` and ``logs/`` too) and returns what the scaling fit, the breakdown and ``bench.md``
need; ``bench.md`` is written by the command once the fit is known.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backends import registry
from backends.contract.spec import MODES, ModelSpec
from experiments import catalog
from experiments.bench.floor import (
    BLAS_ENVIRONMENT, FASHION_MNIST_TRAIN, KERNEL_CHOICE, blas_line, epoch_flops, floor_seconds, measure_floor,
    own_kernels_floor, pool_floors, vector_isa,
)
from experiments.bench.output import write_chart
from experiments.bench.rows import COLUMNS, EventLog, bench_row, unavailable_row
from experiments.plan import Variant
from experiments.rundir import RunFolder, run_metadata
from experiments.runner import RunInterrupted, RunOptions, run_experiment

MAIN, NOISE_OFF = "d2l", "noise-off"  # the variants: the D2L job, and the same job with dropout (0, 0)


@dataclasses.dataclass
class SizeResult:
    batch: int
    out: Path
    rows: list[dict[str, Any]]  # one per backend x mode (the main variant), bench.csv's
    floor: dict[str, Any] | None
    floor_error: str
    meta: dict[str, Any]
    n_train: int
    sizes: tuple[int, ...]
    noise_off: bool  # whether the noise-off jobs ran
    interrupted: RunInterrupted | None = None  # a signal stopped this size's jobs; its rows are those that finished


def plan_rows(chosen: list[str], modes: tuple[str, ...], mode_flag: str, device: str, threads: int,
              batch: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Rows that need no worker (a mode the backend lacks, asked for by name; a device it does not declare), and
    the (backend, mode) pairs that run."""
    rows: list[dict[str, Any]] = []
    runnable: list[tuple[str, str]] = []
    for name in chosen:
        info = registry.resolve(name)
        for mode in modes:
            if mode not in info.modes:
                if mode_flag != "all":
                    rows.append(unavailable_row(name, mode, device, threads,
                                                f"{name} has no {mode} mode (it offers {', '.join(info.modes)})",
                                                batch, None))
            elif device not in info.devices:
                rows.append(unavailable_row(name, mode, device, threads,
                                            f"{name} has no {device} device (it offers {', '.join(info.devices)})",
                                            batch, None))
            else:
                runnable.append((name, mode))
    return rows, runnable


def run_size(args, argv: list[str], *, chosen: list[str], modes: tuple[str, ...], model: ModelSpec, batch: int,
             out: Path, noise_off: bool) -> SizeResult:
    """Run every backend x mode at ``batch`` into ``out`` (with a noise-off twin each when ``noise_off``)."""
    folder = RunFolder(out)
    sizes = model.layer_sizes
    train = {"epochs": 1 + args.repeats, "batch_size": batch, "device": args.device}
    if args.train_limit is not None:
        train["train_limit"] = args.train_limit
    print(f"bench: {', '.join(chosen)} x {', '.join(modes)} on {args.device}, {args.threads} threads, batch {batch}, "
          f"1 warm-up + {args.repeats} steady epochs per job{' (and each with the noise off)' if noise_off else ''}"
          f"; results: {out}", file=sys.stderr)
    rows, runnable = plan_rows(chosen, modes, args.mode, args.device, args.threads, batch)

    floor_errors: list[str] = []
    measured: list[dict[str, Any] | None] = []  # one before each job and one after the last
    labels: list[str] = []

    def between_jobs(job) -> None:
        labels.append(f"before {job.backend} {job.train.mode}{' noise off' if job.variant == NOISE_OFF else ''}"
                      if job is not None else "after the last job")
        print(f"floor: timing the step's GEMMs with NumPy's BLAS ({args.threads} threads, batch {batch}), "
              f"{labels[-1]} ...", file=sys.stderr)
        try:
            measured.append(measure_floor(threads=args.threads, sizes=sizes, batch=batch))
        except (RuntimeError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            floor_errors.append(str(exc))
            print(f"warning: {exc}", file=sys.stderr)
            measured.append(None)

    log = EventLog()
    interrupted: RunInterrupted | None = None
    summaries: dict[tuple[str, str, str], dict[str, Any]] = {}
    run_names = [n for n in chosen if any(b == n for b, _ in runnable)]
    if run_names:
        experiment = catalog.build("d2l", backends=run_names, modes=modes, seeds=(0,), train_overrides=train,
                                   model_overrides={"hiddens": model.hiddens, "dropouts": model.dropouts})
        variants = (Variant(MAIN),)
        if noise_off:
            variants += (Variant(NOISE_OFF, model={"dropouts": (0.0,) * len(model.hiddens)}),)
        experiment = dataclasses.replace(experiment, variants=variants)
        on_ray = args.executor == "ray"
        if on_ray:
            print("bench on Ray: each job asks for every CPU of a node (and uses them as its threads), so that no "
                  "other job shares the node while it is timed", file=sys.stderr)
        options = RunOptions(data_dir=args.data_dir, out_dir=out, threads=args.threads,
                             job_timeout=args.job_timeout, bench_timing=True, executor=args.executor,
                             ray_address=args.ray_address, all_cpus_of_node=on_ray)
        try:
            finished = run_experiment(experiment, options, argv=argv, on_event=log, between_jobs=between_jobs)
        except RunInterrupted as stop:  # the table is still written, for the jobs that finished
            interrupted, finished = stop, stop.rows
        for summary in finished:
            summaries[(summary["backend"], summary["mode"], summary["variant"])] = summary
        meta = json.loads((out / "meta.json").read_text())
    else:
        meta = run_metadata(root=registry.PROJECT_ROOT, threads=args.threads, argv=argv, versions={})
        meta.update(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        between_jobs(None)

    floor = pool_floors(measured, labels)
    n_train = next((epochs[0]["n_train"] for epochs in log.epochs.values() if epochs),
                   args.train_limit or FASHION_MNIST_TRAIN)
    own_kernels = None
    if floor and os.environ.get(KERNEL_CHOICE):
        print(f"floor: once more with {KERNEL_CHOICE} unset (OpenBLAS's own kernels for this CPU) ...",
              file=sys.stderr)
        try:
            own_kernels = own_kernels_floor(floor, threads=args.threads, sizes=sizes, batch=batch, n_train=n_train)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            print(f"warning: {exc}", file=sys.stderr)
    floor_epoch = floor_seconds(floor, n_train, batch) if floor else None
    floor_full = floor_seconds(floor, n_train, batch, full=True) if floor else None
    for name, mode in runnable:
        row = bench_row(backend=name, mode=mode, device=args.device, threads=args.threads,
                        summary=summaries.get((name, mode, MAIN)), epochs=log.epochs.get((name, mode, MAIN), []),
                        timings=log.timings.get((name, mode, MAIN), []), floor=floor_epoch, batch=batch,
                        start=log.starts.get((name, mode, MAIN)))
        if interrupted is not None and (name, mode, MAIN) not in summaries:
            row.update(status="interrupted", error=f"{interrupted.signal_name} stopped the bench before this job")
        if noise_off:
            off = bench_row(backend=name, mode=mode, device=args.device, threads=args.threads,
                            summary=summaries.get((name, mode, NOISE_OFF)),
                            epochs=log.epochs.get((name, mode, NOISE_OFF), []), timings=[], floor=None, batch=batch)
            row["noise_off_seconds"] = off.get("steady_median_seconds")
            if row.get("steady_median_seconds") is not None and row["noise_off_seconds"] is not None:
                row["noise_seconds"] = row["steady_median_seconds"] - row["noise_off_seconds"]
        rows.append(row)
    for row in rows:
        row.update(floor_seconds=floor_epoch, floor_full_seconds=floor_full, hiddens="x".join(map(str, model.hiddens)))
        if floor:
            row.update(peak_gflops=floor.get("peak_gflops"), floor_efficiency=floor.get("efficiency"))
        if floor_full and row.get("steady_median_seconds") is not None:
            row["ratio_to_full_floor"] = row["steady_median_seconds"] / floor_full
    order = {(n, m): i for i, (n, m) in enumerate((n, m) for n in chosen for m in MODES)}
    rows.sort(key=lambda r: order[(r["backend"], r["mode"])])

    for row in rows:
        folder.append("bench", {c: row.get(c) for c in COLUMNS})
    for (name, mode, variant), timings in log.timings.items():
        for timing in timings:
            folder.append("timings", {"backend": name, "mode": mode, "variant": variant,
                                      **{k: v for k, v in timing.items() if k != "event"}})
    floor_error = "; ".join(dict.fromkeys(floor_errors))
    meta.update(bench={"repeats": args.repeats, "epochs_per_job": 1 + args.repeats, "device": args.device,
                       "modes": list(modes), "backends": chosen, "batch_size": batch, "sizes": list(sizes),
                       "n_train": n_train, "steady_statistic": "median of epochs 2..1+repeats",
                       "epoch_flops": epoch_flops(sizes, n_train), "epoch_flops_full": epoch_flops(sizes, n_train,
                                                                                                   full=True),
                       "floor_seconds": floor_epoch, "floor_full_seconds": floor_full, "noise_off_jobs": noise_off},
                floor=floor, floor_error=floor_error or None, floor_own_kernels=own_kernels, threads=args.threads,
                device=args.device,
                vector_isa=vector_isa(), blas=(floor or {}).get("blas"),
                blas_line=blas_line(floor["blas"]) if floor else None,
                blas_environment={name: os.environ.get(name) for name in BLAS_ENVIRONMENT},
                gemm_libraries={f"{b} {m}": s.get("gemm") for (b, m, v), s in log.starts.items() if v == MAIN},
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta["frameworks"] = {**(meta.get("frameworks") or {}),
                          **{r["backend"]: r["framework_version"] for r in rows if r.get("framework_version")}}
    folder.write_json("meta.json", meta)
    title = (f"{'-'.join(map(str, sizes))} MLP, batch {batch}, {n_train:,} examples, threads: {args.threads}, "
             f"{args.device}, {meta.get('cpu')}")
    write_chart(out / "bench.png", rows, floor_epoch, title)
    return SizeResult(batch=batch, out=out, rows=rows, floor=floor, floor_error=floor_error, meta=meta,
                      n_train=n_train, sizes=tuple(sizes), noise_off=noise_off, interrupted=interrupted)
