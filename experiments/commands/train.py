"""``python harness.py [--backend ...] [--experiment ...]``: train an experiment's jobs, then write its report; a thin
layer over ``experiments.api.run`` (flags in, the table out)."""
from __future__ import annotations

import argparse
import sys

from backends import registry
from experiments import api, catalog
from experiments.options import (
    Parser, add_backend_option, add_device_option, add_mode_option, add_resume_options, add_run_options, add_spec_options,
    add_target_option, add_tuning_option,
)
from experiments.running.runner import RunInterrupted, exit_status
from experiments.report.sections import side_by_side
from experiments.version import __version__


DESCRIPTION = """\
Train D2L's dropout MLP on Fashion-MNIST with several frameworks side by side: one worker process per job
(backend x tier x mode x variant x seed), then report.md, learning_curves.png, summary.csv and epochs.csv in the
run folder. Other commands: bench (timings against the machine's floor), parity (every backend against a float64
oracle), compare (two run folders); python harness.py COMMAND --help for each."""

EPILOG = """\
exit status:
  0        every job that could run finished (a backend that is not installed is a row, not a failure)
  1        a job failed, diverged or timed out; every table and the report are still written
  2        a usage error or a run folder that another harness holds: one line on stderr, before any job starts
  130/143  stopped by SIGINT/SIGTERM: finished epochs are kept; the command to resume is printed

examples:
  python harness.py --backend numpy                          # D2L's run on the NumPy reference (10 epochs, seed 0)
  python harness.py --backend all --mode all                 # what make run does: every installed backend
  python harness.py --backend all --mode all --seeds 0 1 2   # three seeds: accuracy with its spread
  python harness.py --backend torch --tuning all             # PyTorch as its tutorial writes it, and tuned
  python harness.py --backend numpy --train-limit 2000 --epochs 2   # a smoke run in seconds
  python harness.py --experiment dropout-swap --backend jax  # exercise 1 of the section (--list: all of them)
  python harness.py --backend torch --backend jax --device gpu      # on an NVIDIA GPU
  python harness.py --backend all --out results/mine --resume       # finish an interrupted or failed run"""


def build_parser() -> Parser:
    parser = Parser(prog="python harness.py", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"dropbench {__version__}",
                        help="print the version and exit")
    add_backend_option(parser, "default: every installed one")
    parser.add_argument("--experiment", default="d2l", metavar="NAME",
                        help=f"a named experiment: {', '.join(catalog.CATALOG)}; --list describes them (default: d2l)")
    add_spec_options(parser)
    add_mode_option(parser, "eager")
    add_tuning_option(parser, "stock")
    add_device_option(parser)
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="seeds to run, e.g. --seeds 0 1 2 (default: the experiment's; 0 for d2l, 0 1 2 for "
                             "the exercises)")
    add_target_option(parser)
    add_run_options(parser, out_default="results/<experiment>-<timestamp>")
    add_resume_options(parser)
    parser.add_argument("--list", action="store_true",
                        help="list the backends (installed? version? install command) and experiments, then exit "
                             "(default: off)")
    return parser


def list_everything() -> str:
    lines = ["Backends:"]
    for name, info in registry.REGISTRY.items():
        version = registry.framework_version(name)
        state = f"available  {info.distribution} {version}" if version else \
            f"missing    install: {info.install}"
        where = "" if info.in_process else f"  (runs under {info.interpreter})"
        lines.append(f"  {name:<11} {state}  modes: {', '.join(info.modes)}{where}")
    lines.append("Experiments:")
    lines.extend(f"  {entry.name:<24} {entry.description}" for entry in catalog.CATALOG.values())
    return "\n".join(lines)


def overrides(args: argparse.Namespace) -> dict:
    """The spec flags the user gave, as ``api.run``'s keyword arguments."""
    given = {"dropouts": args.dropout, "hiddens": args.hiddens, "impl": args.impl, "noise": args.noise,
             "init": args.init, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "weight_decay": args.weight_decay, "train_limit": args.train_limit,
             "device": args.device if args.device != "cpu" else None}
    return {k: v for k, v in given.items() if v is not None}


def run_options(args: argparse.Namespace) -> dict:
    """The run flags, as ``api.run``'s keyword arguments (a new RunOptions field's flag goes here)."""
    return {"out": args.out, "data_dir": args.data_dir, "threads": args.threads, "job_timeout": args.job_timeout,
            "jobs": args.jobs, "executor": args.executor, "ray_address": args.ray_address, "resume": args.resume,
            "force": args.force, "dry_run": args.dry_run, "target_acc": args.target_acc}


def resume_command(argv: list[str], out) -> str:
    words = ["python", *argv]
    if "--out" not in argv:
        words += ["--out", str(out)]
    if "--resume" not in argv:
        words.append("--resume")
    return " ".join(words)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.list:
        print(list_everything())
        return 0
    try:
        result = api.run(args.experiment, backends=args.backend, modes=args.mode, tuning=args.tuning, seeds=args.seeds,
                         argv=argv,
                         **run_options(args), **overrides(args))
    except RunInterrupted as stop:
        print(f"\ninterrupted by {stop.signal_name}: the finished jobs and epochs are in {stop.out}/; continue with\n"
              f"  {resume_command(argv, stop.out)}", file=sys.stderr)
        return stop.status
    if result is None:  # --dry-run: the matrix is printed
        return 0
    print()
    print(side_by_side(result.summary.to_dict("records")))
    written = sorted(path.name for path in result.folder.iterdir() if path.is_file())
    print(f"\nresults in {result.folder}/: {', '.join(written)}")
    print(f"report: {result.report}")
    if result.figure is not None:
        print(f"figure: {result.figure}")
    # 1 when any job of this run failed, diverged or timed out (every table and the report are written by now)
    return exit_status(result.meta.get("job_statuses") or list(result.summary["status"]))
