"""What every command shares: the parser that turns a bad flag into one line, the run options, their validation,
and the choice lists, derived from the contract's constants and the registry."""
from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from backends.contract.spec import DEVICES, IMPLS, INITS, MODES, NOISE_KINDS
from backends.registry import REGISTRY

USER_ERROR = 2
EXECUTORS = ("local", "ray")
MODE_CHOICES = (*MODES, "all")
BACKEND_HELP = f"{', '.join(REGISTRY)}, or all (repeatable)"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see python harness.py --help)")


def add_backend_option(parser: argparse.ArgumentParser, default_text: str) -> None:
    parser.add_argument("--backend", action="append", metavar="NAME", help=f"{BACKEND_HELP}; {default_text}")


def add_mode_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--mode", choices=MODE_CHOICES, default=default, help=f"(default {default})")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default=DEVICES[0], help=f"(default {DEVICES[0]})")


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    """The model's and the trainer's fields a user may set on the command line."""
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--dropout", type=float, nargs="+", metavar="P", help="one probability per hidden layer")
    parser.add_argument("--hiddens", type=int, nargs="+", metavar="H", help="hidden layer widths")
    parser.add_argument("--impl", choices=IMPLS, help="framework Dropout layer or D2L's dropout_layer")
    parser.add_argument("--noise", help=", ".join(NOISE_KINDS))
    parser.add_argument("--init", choices=INITS,
                        help="shared: one NumPy init for all (default); framework: each framework's own default")
    parser.add_argument("--weight-decay", type=float, help="adds weight_decay * W to each kernel's gradient")


def add_run_options(parser: argparse.ArgumentParser, *, out_default: str) -> None:
    """The options every command that runs jobs shares (training runs and the benchmark)."""
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads per framework, set before it is imported (default: all cores)")
    parser.add_argument("--train-limit", type=int, metavar="N", help="train on the first N examples only")
    parser.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST files")
    parser.add_argument("--out", type=Path, help=f"run folder (default {out_default})")
    parser.add_argument("--job-timeout", type=float, default=900.0,
                        help="seconds without progress before a job is killed (default 900)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="local executor: run up to N jobs at once (default 1; their timings then share the "
                             "machine)")
    parser.add_argument("--executor", choices=EXECUTORS, default=EXECUTORS[0],
                        help="local: worker processes on this machine (default); ray: one Ray task per job")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="a running Ray cluster (host:port); without it --executor ray starts a local Ray")


def add_resume_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true",
                        help="continue the run folder --out: reuse its finished jobs, rerun the rest")
    parser.add_argument("--force", action="store_true", help="with --resume: rerun every job, reuse none")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the jobs (and with --resume which are reused), then exit without running")


def validate_run_options(args: argparse.Namespace) -> None:
    """The checks of ``add_run_options``' values that argparse cannot make; a UsageError names the flag."""
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.job_timeout <= 0:
        raise UsageError(f"--job-timeout must be positive, got {args.job_timeout}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    if args.executor == "ray":
        if args.jobs != 1:
            raise UsageError("--jobs is for the local executor; on Ray as many jobs run at once as the cluster's "
                             "CPUs hold (drop --jobs)")
        if importlib.util.find_spec("ray") is None:
            raise UsageError("--executor ray needs Ray: pip install ray==2.60.0 (or pip install '.[ray]')")
    elif args.ray_address:
        raise UsageError("--ray-address goes with --executor ray")
    resume = getattr(args, "resume", False)  # the training command's flags (add_resume_options)
    if getattr(args, "force", False) and not resume:
        raise UsageError("--force goes with --resume (it reruns every job of the run folder)")
    if resume and args.out is None:
        raise UsageError("--resume needs --out naming the run folder to continue")


def check_train_limit(train_limit: int | None, training_examples: int) -> None:
    if train_limit is not None and train_limit > training_examples:
        raise UsageError(f"--train-limit {train_limit} is larger than the training set ({training_examples:,} "
                         f"examples); lower it or leave it out")


def modes_of(choice: str) -> tuple[str, ...]:
    return MODES if choice == "all" else (choice,)
