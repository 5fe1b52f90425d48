"""``python harness.py [--backend ...] [--experiment ...]``: train an experiment's jobs, then write its report."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from backends import registry
from experiments import catalog, data, report
from experiments.options import (
    Parser, UsageError, add_backend_option, add_mode_option, add_run_options, add_spec_options, modes_of,
    validate_run_options,
)
from experiments.runner import RunOptions, run_experiment
from experiments.sections import side_by_side


def build_parser() -> Parser:
    parser = Parser(prog="python harness.py", description="Train D2L's dropout MLP on Fashion-MNIST with several "
                    "frameworks side by side and write CSV reports. Other commands: bench (python harness.py bench "
                    "--help).")
    add_backend_option(parser, "default: all available")
    parser.add_argument("--experiment", default="d2l", help="named experiment (default d2l; --list shows them)")
    add_spec_options(parser)
    add_mode_option(parser, "eager")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="seeds to run, e.g. --seeds 0 1 2")
    add_run_options(parser, out_default="results/<experiment>-<timestamp>")
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


def overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    model = {"dropouts": args.dropout, "hiddens": args.hiddens, "impl": args.impl, "noise": args.noise,
             "init": args.init}
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
             "train_limit": args.train_limit}
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if v is not None}
    if "hiddens" in model and "dropouts" not in model and len(model["hiddens"]) != 2:
        raise UsageError("--hiddens with other than two layers needs --dropout with one probability per layer")
    return model, {k: v for k, v in train.items() if v is not None}


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.list:
        print(list_everything())
        return 0
    validate_run_options(args)
    model, train = overrides(args)
    modes = modes_of(args.mode)
    chosen = registry.select(args.backend, installed_only=True)
    if not chosen:
        raise registry.BackendError("no backend is available; run make setup (or pip install numpy) first")
    if args.mode != "all":
        for name in chosen:
            if args.mode not in registry.resolve(name).modes:
                raise UsageError(f"backend {name} has no {args.mode} mode (it offers "
                                 f"{', '.join(registry.resolve(name).modes)}); use --mode all or another backend")
    experiment = catalog.build(args.experiment, backends=chosen, modes=modes, seeds=args.seeds,
                               model_overrides=model, train_overrides=train)
    data_dir = data.locate(args.data_dir)
    out = args.out or Path("results") / f"{experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = RunOptions(data_dir=data_dir, out_dir=out, threads=args.threads, job_timeout=args.job_timeout)
    print(f"{experiment.name}: {experiment.description}", file=sys.stderr)
    print(f"data: {data_dir}   results: {out}   threads: {args.threads}", file=sys.stderr)
    rows = run_experiment(experiment, options, argv=argv)
    report.write(experiment.name, out)
    print()
    print(side_by_side(rows))
    written = sorted(path.name for path in Path(out).iterdir() if path.is_file())
    print(f"\nresults in {out}/: {', '.join(written)}")
    return 0 if any(row["status"] == "ok" for row in rows) else 1
