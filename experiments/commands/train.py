"""``python harness.py [--backend ...] [--experiment ...]``: train an experiment's jobs, then write its report; a thin
layer over ``experiments.api.run`` (flags in, the table out)."""
from __future__ import annotations

import argparse
import sys

from backends import registry
from experiments import api, catalog
from experiments.options import (
    Parser, add_backend_option, add_device_option, add_mode_option, add_resume_options, add_run_options, add_spec_options,
)
from experiments.runner import RunInterrupted
from experiments.sections import side_by_side


def build_parser() -> Parser:
    parser = Parser(prog="python harness.py", description="Train D2L's dropout MLP on Fashion-MNIST with several "
                    "frameworks side by side and write CSV reports. Other commands: bench, parity, compare "
                    "(python harness.py COMMAND --help).")
    add_backend_option(parser, "default: all available")
    parser.add_argument("--experiment", default="d2l", help="named experiment (default d2l; --list shows them)")
    add_spec_options(parser)
    add_mode_option(parser, "eager")
    add_device_option(parser)
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="seeds to run, e.g. --seeds 0 1 2")
    add_run_options(parser, out_default="results/<experiment>-<timestamp>")
    add_resume_options(parser)
    parser.add_argument("--list", action="store_true", help="list backends and experiments, then exit")
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
            "force": args.force, "dry_run": args.dry_run}


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
        result = api.run(args.experiment, backends=args.backend, modes=args.mode, seeds=args.seeds, argv=argv,
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
    return 0 if result.ok else 1
