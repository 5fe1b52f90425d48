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


def ladder_cases(tuning: str) -> list:
    """The parity ladder's cases of one tier for every backend under test (tests/test_parity.py: the stock tier,
    tests/test_parity_tuned.py: the tuned one, so that ``make test``'s test processes can take a tier each)."""
    import backends
    from experiments.parity import ladder
    from tests.conftest import backends_under_test

    return [case for name in backends_under_test()
            for case in ladder.cases(name, modes=backends.resolve(name).modes, tunings=(tuning,))]


def assert_rung_holds(make_backend, fashion, case) -> None:
    """Run one case of the ladder; fail with the numbers of each check that missed."""
    checks = case(make_backend, fashion)
    assert checks, "a rung must measure something"
    missed = [check.message() for check in checks if not check.passed]
    assert not missed, f"{case.id}: " + "; ".join(missed)
