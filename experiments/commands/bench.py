"""``python harness.py bench``: synchronised timings of every backend x mode side by side, against the machine's floor.

Each backend x mode is one D2L job (the section's model, batch 256, real Fashion-MNIST) with ``1 + repeats`` epochs,
run by the ordinary runner in its own worker process: same data, same batches (one shared order per seed and epoch),
same thread count, set before the framework is imported. Epoch 1 carries compilation and warm-up; the steady epoch
time is the median (and interquartile range) of epochs 2..1+repeats (``experiments.stats.steady_epochs``). Every
timer is read after the backend's ``synchronize()`` (``backends.contract.Stopwatch``). The floor is measured before
every job and after the last (``experiments.bench.floor``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backends import registry
from backends.contract.spec import MODES, ModelSpec
from experiments import catalog, data
from experiments.bench.floor import (
    BLAS_ENVIRONMENT, FASHION_MNIST_TRAIN, BATCH_SIZE, blas_line, epoch_flops, floor_seconds, measure_floor,
    pool_floors,
)
from experiments.bench.output import console_table, floor_summary, machine_line, write_chart, write_markdown
from experiments.bench.rows import COLUMNS, EventLog, bench_row, unavailable_row
from experiments.options import (
    Parser, UsageError, add_backend_option, add_device_option, add_mode_option, add_run_options, modes_of,
    validate_run_options,
)
from experiments.rundir import RunFolder, run_metadata
from experiments.runner import RunOptions, run_experiment


def build_parser():
    parser = Parser(prog="python harness.py bench", description="Time every backend x mode side by side on the D2L "
                    "job (batch 256, real data), each in its own worker, against the machine's BLAS floor.")
    add_backend_option(parser, "default all, and a backend that is not installed gets a row that says so")
    add_mode_option(parser, "all")
    parser.add_argument("--repeats", type=int, default=5, help="steady epochs per job, after one warm-up epoch (5)")
    add_device_option(parser)
    add_run_options(parser, out_default="results/bench-<timestamp>")  # --threads also sets the floor's threads
    return parser


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    validate_run_options(args)
    if args.jobs > 1:
        raise UsageError(f"the bench runs one job at a time (--jobs {args.jobs} refused): jobs that run together "
                         f"share the CPUs, so their timings would not be the backend's own")
    chosen = registry.select(args.backend, installed_only=False)
    modes = modes_of(args.mode)
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
        info = registry.resolve(name)
        for mode in modes:
            if mode not in info.modes:
                if args.mode != "all":
                    rows.append(unavailable_row(name, mode, args.device, args.threads,
                                                f"{name} has no {mode} mode (it offers {', '.join(info.modes)})",
                                                batch, None))
            elif args.device not in info.devices:
                rows.append(unavailable_row(name, mode, args.device, args.threads,
                                            f"{name} has no {args.device} device (it offers {', '.join(info.devices)})",
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
        on_ray = args.executor == "ray"
        if on_ray:
            print("bench on Ray: each job asks for every CPU of a node (and uses them as its threads), so that no "
                  "other job shares the node while it is timed", file=sys.stderr)
        options = RunOptions(data_dir=data_dir, out_dir=out, threads=args.threads, job_timeout=args.job_timeout,
                             bench_timing=True, executor=args.executor, ray_address=args.ray_address,
                             all_cpus_of_node=on_ray)
        for summary in run_experiment(experiment, options, argv=argv, on_event=log, between_jobs=between_jobs):
            summaries[(summary["backend"], summary["mode"])] = summary
        meta = json.loads((out / "meta.json").read_text())
    else:
        meta = run_metadata(root=registry.PROJECT_ROOT, threads=args.threads, argv=argv, versions={})
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
        rows.append(row)
    for row in rows:
        row["floor_seconds"] = floor_epoch
    order = {(n, m): i for i, (n, m) in enumerate((n, m) for n in chosen for m in MODES)}
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
