"""``python harness.py bench``: synchronised timings of every backend x mode x tier side by side, against the
machine's floor, in rounds.

Each backend x mode x tier is one D2L job (the section's model, batch 256, real Fashion-MNIST) with ``1 + repeats``
epochs, run by the ordinary runner in its own worker process: same data, same batches (one shared order per seed and
epoch), same thread count, set before the framework is imported. Epoch 1 carries compilation and warm-up; a round's
steady epoch time is the median of epochs 2..1+repeats (``experiments.report.stats.steady_epochs``). Every timer is read
after the backend's ``synchronize()`` (``backends.contract.Stopwatch``). The bench runs ``--rounds`` rounds; each
runs every job once, in fresh worker processes, in an order shuffled per round, with the floor timed beside each
job's steady epochs (``experiments.bench.rounds``, ``experiments.bench.floor_beside``); the figures are medians over
the rounds with an interval of the median (``experiments.bench.intervals``); ``docs/bench.md`` has the method. With
several ``--batch-sizes`` every size is one such run in its own folder, and the scaling fit
(``experiments.bench.scaling``) gives each backend x mode x tier's fixed cost per step; at batch 256 each job also
runs with the noise off, for the breakdown (``experiments.bench.breakdown``).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

from backends import registry
from backends.contract.spec import ModelSpec
from experiments import data
from experiments.bench.breakdown import (
    BREAKDOWN_COLUMNS, ROUND_COLUMNS as BREAKDOWN_ROUND_COLUMNS, breakdown_chart, breakdown_lines, breakdown_rows,
)
from experiments.bench.floor import BATCH_SIZE
from experiments.bench.intervals import coverage_words
from experiments.bench.output import console_table, floor_summary, machine_line, two_tier_table, write_markdown
from experiments.bench.scaling import (
    SCALING_COLUMNS, fit_all, fit_lines, round_fits, scaling_chart, scaling_markdown, scaling_rows,
)
from experiments.bench.session import run_size
from experiments.running.executors import check_ray_address
from experiments.running.runner import exit_status, summary_statuses
from experiments.options import (
    Parser, UsageError, add_backend_option, add_device_option, add_mode_option, add_run_options, add_tuning_option,
    modes_of, tunings_of, validate_run_options,
)

ROUNDS, REPEATS = 3, 2  # the default bench: 3 rounds of 1 warm-up + 2 steady epochs per job (docs/bench.md: why)


EPILOG = """\
Method, every column and the breakdown: docs/bench.md.

exit status:
  0        every job that could run finished (a backend that is not installed is a row, not a failure)
  1        a job failed, diverged or timed out; every table is still written
  2        a usage error, one line on stderr, before any job starts
  130/143  stopped by SIGINT/SIGTERM: the tables hold the jobs that finished

examples:
  python harness.py bench                                   # every backend x mode x tier: which is fastest here
  python harness.py bench --backend numpy --backend jax     # two backends
  python harness.py bench --backend torch --tuning stock    # PyTorch as its tutorial writes it only
  python harness.py bench --threads 1                       # one thread a job: steadier on a shared machine
  python harness.py bench --batch-sizes 64 256 1024         # the scaling run: t0 + k fit per backend x mode
  python harness.py bench --backend torch --backend jax --device gpu   # on an NVIDIA GPU"""


def build_parser():
    parser = Parser(prog="python harness.py bench", epilog=EPILOG, description="Time every backend x mode side by "
                    "side on the D2L job (batch 256, real data), each in its own worker, against the machine's BLAS "
                    "floor, and write bench.csv, bench.md and bench.png.")
    add_backend_option(parser, "default all, and a backend that is not installed gets a row that says so")
    add_mode_option(parser, "all")
    add_tuning_option(parser, "all")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="rounds: each runs every job once, in fresh processes, in a shuffled order, with the "
                             f"floor timed beside each job's steady epochs; figures are medians over them "
                             f"(default: {ROUNDS})")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"steady epochs per job and round, after one warm-up epoch (default: {REPEATS})")
    parser.add_argument("--order-seed", type=int, default=0, metavar="S",
                        help="seed of the rounds' shuffled orders, recorded in meta.json (default: 0)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="B",
                        help=f"batch sizes to run every job at; several: the scaling run and its fit (default: "
                             f"{BATCH_SIZE})")
    parser.add_argument("--hiddens", type=int, nargs="+", metavar="H", help="hidden layer widths (default: 256 256)")
    parser.add_argument("--noise-off", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also run each job at batch {BATCH_SIZE} (or the size nearest it) with dropout 0, for the "
                        "breakdown (default: on)")
    add_device_option(parser)
    add_run_options(parser, out_default="results/bench-<timestamp>",  # --threads also sets the floor's threads
                    jobs_help="only 1: the bench runs one job at a time, so that no job's timing shares the machine "
                              "(default: 1)")
    return parser


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {args.rounds}")
    validate_run_options(args)
    if args.jobs > 1:
        raise UsageError(f"the bench runs one job at a time (--jobs {args.jobs} refused): jobs that run together "
                         f"share the CPUs, so their timings would not be the backend's own")
    batches = list(dict.fromkeys(args.batch_sizes or [BATCH_SIZE]))
    if any(b < 1 for b in batches):
        raise UsageError(f"--batch-sizes must be positive integers, got {' '.join(map(str, args.batch_sizes))}")
    hiddens = tuple(args.hiddens or ModelSpec().hiddens)
    model = ModelSpec(hiddens=hiddens, dropouts=(0.5,) * len(hiddens))  # validates the widths (one line if bad)
    chosen = registry.select(args.backend, installed_only=False)
    modes = modes_of(args.mode)
    tunings = tunings_of(args.tuning)
    args.data_dir = data.locate(args.data_dir)
    check_ray_address(args.executor, args.ray_address)
    out = args.out or Path("results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    scaling = len(batches) > 1
    def nearest_default(sizes):  # the breakdown's size: 256 or the nearest
        return min(sizes, key=lambda b: abs(math.log(b / BATCH_SIZE)))

    split_at = nearest_default(batches)

    results = []
    for b in batches:
        results.append(run_size(args, argv, chosen=chosen, modes=modes, tunings=tunings, model=model, batch=b,
                                out=out / f"batch-{b}" if scaling else out, noise_off=args.noise_off and b == split_at))
        if results[-1].interrupted:  # what finished is still written below; the remaining sizes are not run
            break
    interrupted = results[-1].interrupted
    if interrupted:
        split_at = nearest_default([r.batch for r in results])

    rows = scaling_rows(results)
    fitted = len(results) > 1  # the sizes that ran: all of them unless interrupted
    fits = fit_all(rows) if fitted else {}
    split = next(r for r in results if r.batch == split_at)
    per_round, parts = breakdown_rows(split.round_rows, split.n_train, round_fits(results) if fitted else {},
                                      split.floor)
    machine = machine_line(results[0].meta, results[0].floor)
    width = "-".join(map(str, model.layer_sizes))
    table = breakdown_lines(parts, split_at, (split.floor or {}).get("peak_gflops"))
    for result in results:
        write_markdown(result.out / "bench.md", result.rows, result.meta, result.floor, result.sizes,
                       result.n_train, result.batch, table if result is split else ())
    for where in dict.fromkeys([out, split.out]):
        _write_csv(where / "breakdown.csv", parts, BREAKDOWN_COLUMNS)
        _write_csv(where / "breakdown_rounds.csv", per_round, BREAKDOWN_ROUND_COLUMNS)
        breakdown_chart(where / "breakdown.png", parts, f"{width} MLP, batch {split_at}, {split.n_train:,} examples, "
                        f"threads {args.threads}: where the steady epoch goes\n{results[0].meta.get('cpu')}")

    for result in results:
        line = (floor_summary(result.floor, result.n_train, result.batch, result.sizes) if result.floor
                else f"floor: not measured ({result.floor_error})")
        print(f"\nbatch {result.batch}:")
        print(console_table(result.rows, line))
    print("\n" + "\n".join(table))
    print(f"machine: {machine}")
    written = ("bench.csv, rounds.csv, bench.md, bench.png, breakdown.csv, breakdown_rounds.csv, breakdown.png, "
               "meta.json; round-<r>/ per round")
    if scaling and not fitted:  # interrupted during the first size of several
        written = f"breakdown.csv, breakdown.png; batch-{results[0].batch}/ with the bench's files"
    if fitted:
        ran = " ".join(str(r.batch) for r in results)
        title = (f"{width} MLP, batch sizes {ran}, {results[0].n_train:,} examples, "
                 f"threads {args.threads}, {args.device}, {results[0].meta.get('cpu')}")
        _write_csv(out / "scaling.csv", rows, SCALING_COLUMNS)
        scaling_markdown(out / "scaling.md", rows, fits, machine, title, table)
        scaling_chart(out / "scaling.png", rows, title)
        print("\nfit: step seconds = t0 + k x GEMM seconds per step (residuals: fit / measured - 1)")
        print("\n".join(fit_lines(rows, fits)))
        written = ("scaling.csv, scaling.md, scaling.png, breakdown.csv, breakdown_rounds.csv, breakdown.png; "
                   "batch-<B>/ per size")
    print(f"\nresults in {out}/ ({written})")
    for result in results:  # the console ends with the two tiers side by side
        ran = len({r["round"] for r in result.round_rows})
        print(f"\ntwo tiers, batch {result.batch}: the median over {ran} round{'s' if ran != 1 else ''} "
              f"[{coverage_words(ran)}]; gain = stock / tuned steady epoch, within each round")
        print("\n".join(two_tier_table(result.rows)))
    if interrupted:
        print(f"\ninterrupted by {interrupted.signal_name}: the tables hold the jobs that finished", file=sys.stderr)
        return interrupted.status
    # 1 when any job of any round failed, diverged or timed out (noise-off twins included: every summary row), or
    # nothing could run; the tables above are written first
    return exit_status([row["status"] for result in results for row in result.rows]
                       + [status for result in results for status in summary_statuses(result.out)])
