"""What every command shares: the parser that turns a bad flag into one line, the run options, their validation,
and the choice lists, derived from the contract's constants and the registry."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from backends.contract.spec import DEVICES, IMPLS, INITS, MODES, NOISE_KINDS
from backends.registry import REGISTRY

USER_ERROR = 2
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


def validate_run_options(args: argparse.Namespace) -> None:
    """The checks of ``add_run_options``' values that argparse cannot make; a UsageError names the flag."""
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.job_timeout <= 0:
        raise UsageError(f"--job-timeout must be positive, got {args.job_timeout}")


def modes_of(choice: str) -> tuple[str, ...]:
    return MODES if choice == "all" else (choice,)
