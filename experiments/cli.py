"""The command line: ``harness.py [COMMAND] ...`` -> the command's module. Every user error is one line on stderr
and exit status 2, never a traceback."""
from __future__ import annotations

import sys
from typing import Callable

from backends.contract.spec import SpecError
from backends.registry import BackendError
from experiments.catalog import CatalogError
from experiments.commands import bench, compare, parity, train
from experiments.data import DataError
from experiments.options import USER_ERROR, UsageError

# python harness.py bench|parity|compare ...; anything else is a training run
COMMANDS = {"bench": bench, "parity": parity, "compare": compare}
USER_ERRORS = (UsageError, SpecError, CatalogError, DataError, BackendError)


def as_command(action: Callable[[], int]) -> int:
    """Run a command: a user error becomes one line on stderr and exit status 2, never a traceback."""
    try:
        return action()
    except USER_ERRORS as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt as exc:  # the runner's RunInterrupted carries 128 + the signal's number
        print("error: interrupted; rows of finished epochs are kept in the run folder", file=sys.stderr)
        return getattr(exc, "status", 130)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in COMMANDS:
        command, rest, shown = COMMANDS[argv[0]], argv[1:], ["harness.py", *argv]
    else:
        command, rest, shown = train, argv, ["harness.py", *argv]
    return as_command(lambda: command.run(command.build_parser().parse_args(rest), shown))
