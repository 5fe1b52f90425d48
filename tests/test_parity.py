"""The parity ladder: every backend, both implementations, against the NumPy float64 oracle (the stock tier here,
the tuned tier in tests/test_parity_tuned.py).

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
from backends.contract.spec import TUNINGS
from experiments.parity import ladder
from tests.conftest import backends_under_test
from tests.helpers import assert_rung_holds, ladder_cases

CASES = ladder_cases("stock")


def test_the_ladder_has_every_rung_for_every_mode_and_tier_it_runs_in():
    every = [case for tuning in TUNINGS for case in ladder_cases(tuning)]
    whole = [case for name in backends_under_test() for case in ladder.cases(name, modes=backends.resolve(name).modes)]
    assert sorted(c.id for c in every) == sorted(c.id for c in whole)  # the two files hold the whole ladder
    for name in backends_under_test():
        modes = backends.resolve(name).modes
        for tuning in TUNINGS:
            mine = [c for c in every if c.backend == name and c.tuning == tuning]
            distinct = backends.capabilities(name).distinct_impls
            assert {c.rung for c in mine} == set(ladder.RUNGS) - (set() if distinct else {"concise_scratch"})
            for mode in modes:  # the rungs that go through the modes' own code paths run in every mode
                assert {c.rung for c in mine if c.mode == mode} >= {
                    "evaluate_exact", "sgd_trajectory", "epoch_no_noise", "epoch_noise_on", "epoch_new_noise",
                    "evaluate_chunks"}
            assert len([c for c in mine if c.rung == "sgd_trajectory"]) == len(modes) * 9  # 2 impls x 4 noises + wd
            assert all(c.steps == 20 for c in mine)
            assert all(c.train().tuning == tuning for c in mine)


def test_the_concise_scratch_rung_runs_only_where_the_two_impls_are_different_code():
    assert not any(c.rung == "concise_scratch" for c in ladder.cases("numpy", modes=("eager",)))
    assert any(c.rung == "concise_scratch" for c in ladder.cases("torch", modes=("eager",)))


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_rung(make_backend, fashion, case):
    assert_rung_holds(make_backend, fashion, case)


def test_sgd_trajectory_names_the_relu_kink_where_every_float32_framework_leaves_the_oracle(make_backend,
                                                                                            monkeypatch):
    """A ReLU kink placed by construction, so that no BLAS kernel's rounding decides it: every example of the batch
    reads only inputs 0 and 1 (both 1), and hidden unit 0's kernel column is (1, 2**-30, 0, ...) with bias -1. Its
    pre-activation is 2**-30 in float64, but exactly 0 in float32 whatever the summation order (1 + 2**-30 rounds to
    1 in any order, the other products are exact zeros). So the oracle's unit is on and every float32 framework's is
    off: the trajectory leaves the oracle at step 0, and every failing check names that step's 256 flipped ReLUs
    (one unit x 256 examples) and the oracle's pre-activation 2**-30."""
    import dataclasses
    import types

    import numpy as np

    from backends import contract
    from backends.contract import ModelSpec
    from experiments.parity import rungs
    from experiments.parity.case import Case

    @dataclasses.dataclass(frozen=True)
    class OneHiddenLayer(Case):
        def model(self, **fields):
            return ModelSpec(hiddens=(16,), dropouts=(0.0,), **fields)

    real_init = contract.shared_init

    def kinked_init(model, seed):
        params = real_init(model, seed)
        kernel, bias = params["dense_0/kernel"], params["dense_0/bias"]
        kernel[:, 0] = 0.0
        kernel[0, 0], kernel[1, 0], bias[0] = 1.0, 2.0 ** -30, -1.0
        return params
    monkeypatch.setattr(contract, "shared_init", kinked_init)
    x = np.zeros((2 * 256, 784), dtype=np.float32)
    x[:, :2] = 1.0
    y = np.random.default_rng(0).integers(0, 10, len(x))
    data = types.SimpleNamespace(train_x=x, train_y=y)
    case = OneHiddenLayer(rung="sgd_trajectory", backend="numpy", impl="concise", mode="eager", noise="dropout",
                          run=rungs.sgd_trajectory, steps=2)
    checks = case(make_backend, data)
    failed = [c for c in checks if not c.passed]
    assert failed and min(c.step for c in failed) == 0
    assert {"dense_0/kernel", "dense_0/bias"} <= {c.what.split(" ")[0] for c in failed if c.step == 0}
    assert all("at step 0: 256 unit(s), the oracle's pre-activation 9.3e-10" in c.what for c in failed), failed[0].what
