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


def test_sgd_trajectory_names_the_relu_kink_where_every_float32_framework_leaves_the_oracle(make_backend, fashion,
                                                                                            monkeypatch):
    """The dropconnect trajectory under other masks of the same law (one PCG64 bit an element, ``draw_keep``) leaves
    the float64 oracle at step 7, where one first-layer pre-activation of the oracle (8.5e-8) lies on the other side
    of zero in float32: the steps before it pass, and every check that fails names that step's kink."""
    import numpy as np

    from backends import contract
    from experiments.parity import rungs
    from experiments.parity.case import Case

    def bit_masks(model, batch_size, rng):
        return [contract.draw_keep(rng, shape, p).astype(np.float32)
                for shape, p in zip(contract.noise_shapes(model, batch_size), model.dropouts)]
    monkeypatch.setattr(contract, "draw_masks", bit_masks)
    case = Case(rung="sgd_trajectory", backend="numpy", impl="concise", mode="eager", noise="dropconnect",
                run=rungs.sgd_trajectory, steps=9)
    checks = case(make_backend, fashion)
    assert all(c.passed for c in checks if c.step < 7)
    failed = [c for c in checks if not c.passed]
    assert failed and min(c.step for c in failed) == 7
    assert all("at step 7: 1 unit(s), the oracle's pre-activation 8.5e-08" in c.what for c in failed), failed[0].what
