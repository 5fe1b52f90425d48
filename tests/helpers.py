"""Helpers that several test files use."""
from __future__ import annotations

import csv

import psutil

from experiments.parity.checks import close


def assert_close(actual, expected, what: str, rtol: float = 1e-5) -> None:
    """Max absolute error within ``rtol`` times the scale of ``expected`` (its largest magnitude), and finite: the
    parity ladder's ``close``."""
    check = close(what, actual, expected, rtol=rtol)
    assert check.passed, check.message()


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def workers_of(out) -> list[psutil.Process]:
    """Worker processes of the run in ``out`` (their command line names the run folder)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "experiments.running.worker" in cmdline and any(arg.startswith(str(out)) for arg in cmdline):
            found.append(process)
    return found
