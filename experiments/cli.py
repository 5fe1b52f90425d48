"""Command line: flags -> Experiment -> runner -> reports. Every user error is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

USER_ERROR = 2


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see python harness.py --help)")


def build_parser() -> Parser:
    parser = Parser(prog="python harness.py", description="Train D2L's dropout MLP on Fashion-MNIST with several "
                    "frameworks side by side and write CSV reports.")
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="numpy, torch, jax, tensorflow, mxnet, or all (repeatable; default: all available)")
    parser.add_argument("--experiment", default="d2l", help="named experiment (default d2l; --list shows them)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--dropout", type=float, nargs="+", metavar="P", help="one probability per hidden layer")
    parser.add_argument("--hiddens", type=int, nargs="+", metavar="H", help="hidden layer widths")
    parser.add_argument("--impl", choices=["concise", "scratch"], help="framework Dropout layer or D2L's dropout_layer")
    parser.add_argument("--noise", help="dropout, dropconnect, gaussian or additive")
    parser.add_argument("--init", choices=["shared", "framework"],
                        help="shared: one NumPy init for all (default); framework: each framework's own default")
    parser.add_argument("--weight-decay", type=float, help="adds weight_decay * W to each kernel's gradient")
    parser.add_argument("--mode", choices=["eager", "compiled", "all"], default="eager")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="seeds to run, e.g. --seeds 0 1 2")
    add_run_options(parser, out_default="results/<experiment>-<timestamp>")
    parser.add_argument("--list", action="store_true", help="list backends and experiments, then exit")
    return parser


def add_run_options(parser: argparse.ArgumentParser, *, out_default: str) -> None:
    """The options every command that runs jobs shares (training runs and the benchmark)."""
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads per framework, set before it is imported (default: all cores)")
    parser.add_argument("--train-limit", type=int, metavar="N", help="train on the first N examples only")
    parser.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST files")
    parser.add_argument("--out", type=Path, help=f"run folder (default {out_default})")
    parser.add_argument("--job-timeout", type=float, default=900.0,
                        help="seconds without progress before a job is killed (default 900)")


def list_everything() -> str:
    import backends
    from experiments.catalog import CATALOG

    lines = ["Backends:"]
    for name, info in backends.REGISTRY.items():
        version = backends.framework_version(name)
        state = f"available  {info.distribution} {version}" if version else \
            f"missing    install: {info.install}"
        where = "" if info.in_process else f"  (runs under {info.interpreter})"
        lines.append(f"  {name:<11} {state}  modes: {', '.join(info.modes)}{where}")
    lines.append("Experiments:")
    lines.extend(f"  {entry.name:<24} {entry.description}" for entry in CATALOG.values())
    return "\n".join(lines)


def choose_backends(requested: list[str] | None) -> list[str]:
    import backends

    names = requested or ["all"]
    chosen: list[str] = []
    for name in names:
        if name.lower() == "all":
            chosen.extend(n for n in backends.available_backends() if n not in chosen)
            continue
        info = backends.resolve(name)
        if not backends.is_available(info.name):
            raise backends.BackendError(backends.unavailable_reason(info.name))
        if info.name not in chosen:
            chosen.append(info.name)
    return chosen


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
    import backends
    from experiments import catalog, data
    from experiments.report import side_by_side
    from experiments.runner import RunOptions, run_experiment

    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.job_timeout <= 0:
        raise UsageError(f"--job-timeout must be positive, got {args.job_timeout}")
    model, train = overrides(args)
    modes = ("eager", "compiled") if args.mode == "all" else (args.mode,)
    chosen = choose_backends(args.backend)
    if not chosen:
        raise backends.BackendError("no backend is available; run make setup (or pip install numpy) first")
    if args.mode != "all":
        for name in chosen:
            if args.mode not in backends.resolve(name).modes:
                raise UsageError(f"backend {name} has no {args.mode} mode (it offers "
                                 f"{', '.join(backends.resolve(name).modes)}); use --mode all or another backend")
    experiment = catalog.build(args.experiment, backends=chosen, modes=modes, seeds=args.seeds,
                               model_overrides=model, train_overrides=train)
    data_dir = data.locate(args.data_dir)
    out = args.out or Path("results") / f"{experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = RunOptions(data_dir=data_dir, out_dir=out, threads=args.threads, job_timeout=args.job_timeout)
    print(f"{experiment.name}: {experiment.description}", file=sys.stderr)
    print(f"data: {data_dir}   results: {out}   threads: {args.threads}", file=sys.stderr)
    rows = run_experiment(experiment, options, argv=argv)
    from experiments import analysis

    analysis.write(experiment.name, out)
    print()
    print(side_by_side(rows))
    written = sorted(path.name for path in Path(out).iterdir() if path.is_file())
    print(f"\nresults in {out}/: {', '.join(written)}")
    return 0 if any(row["status"] == "ok" for row in rows) else 1


def as_command(action: Callable[[], int]) -> int:
    """Run a command: a user error becomes one line on stderr and exit status 2, never a traceback."""
    from backends import BackendError
    from experiments.catalog import CatalogError
    from experiments.data import DataError
    from experiments.spec import SpecError

    try:
        return action()
    except (UsageError, SpecError, CatalogError, DataError, BackendError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted; rows of finished epochs are kept in the run folder", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # python harness.py bench ...: the benchmark mode (experiments/bench.py)
        from experiments import bench

        return bench.main(argv[1:])

    def train() -> int:
        args = build_parser().parse_args(argv)
        if args.list:
            print(list_everything())
            return 0
        return run(args, ["harness.py", *argv])

    return as_command(train)
