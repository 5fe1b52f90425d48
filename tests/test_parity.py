"""The parity ladder: every backend, both implementations, against the NumPy float64 oracle.

The rungs live in ``experiments.parity`` (``ladder.cases`` says which rung runs for which backend x impl x mode x
noise; the rungs measure and return ``Check``s), so that ``python harness.py parity`` runs exactly these checks on a
user's machine. Here every case is one test that fails with the numbers of each check that missed.

Rungs: 1 static layout, set_params, seeded framework init; 2 forward and evaluate, noise off; 3 loss and gradients
with injected noise (every noise kind); 4 twenty SGD steps on real batches with injected noise, every step (and with
weight decay); whole epochs (train_epoch, every mode: no noise against the oracle with and without weight decay,
native noise really on, new noise every epoch, evaluate over several chunks); 5 native noise statistics; 6 concise
and scratch agree. Tolerance: ``experiments.parity.checks.RTOL`` (scale-relative; its docstring says why 1e-5).
"""
from __future__ import annotations

import pytest

import backends
from experiments.parity import ladder
from tests.conftest import backends_under_test

CASES = [case for name in backends_under_test() for case in ladder.cases(name, modes=backends.resolve(name).modes)]


def test_the_ladder_has_every_rung_for_every_mode_it_runs_in():
    for name in backends_under_test():
        modes = backends.resolve(name).modes
        mine = [c for c in CASES if c.backend == name]
        assert {c.rung for c in mine} == set(ladder.RUNGS)
        for mode in modes:  # the rungs that go through the modes' own code paths run in every mode
            assert {c.rung for c in mine if c.mode == mode} >= {
                "evaluate_exact", "sgd_trajectory", "epoch_no_noise", "epoch_noise_on", "epoch_new_noise",
                "evaluate_chunks"}
        assert len([c for c in mine if c.rung == "sgd_trajectory"]) == len(modes) * 9  # 2 impls x 4 noises + wd
        assert all(c.steps == 20 for c in mine)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_rung(make_backend, fashion, case):
    checks = case(make_backend, fashion)
    assert checks, "a rung must measure something"
    missed = [check.message() for check in checks if not check.passed]
    assert not missed, f"{case.id}: " + "; ".join(missed)
