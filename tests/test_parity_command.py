"""``python harness.py parity``: its files, its exit status, and that a deliberately broken backend fails it: each
double plants its bug in the code that trains for its tier (the stock tier's plain step, the tuned tier's fused
step), so that the ladder is shown to catch a bug where a job would meet it; a rung that raises is a failure too."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import backends
from backends.numpy import backend as numpy_stock, tuned as numpy_tuned
from experiments import cli
from experiments.commands import parity
from experiments.parity import ladder
from experiments.parity.factory import BackendFactory
from tests.helpers import read_csv


class MisscaledDropout(numpy_stock.Backend):
    """Dropout survivors scaled by 1 instead of 1/(1-p): D2L's mask without the inverted-dropout scale, in every
    draw the stock tier uses (its own, which it trains with, and the injected ones)."""

    def _noise(self, batch_size, masks):
        draws = super()._noise(batch_size, masks)
        if self.model.noise != "dropout":
            return draws
        return [draw * self.dtype(1 - p) for draw, p in zip(draws, self.model.dropouts)]


class GradientOff(numpy_stock.Backend):
    """The first kernel's gradient off by 1e-3 of its scale: the size of a real bug (a missed term), not of rounding,
    in the stock tier's ``_loss_grads``, which its training step (``_step``) uses."""

    def _loss_grads(self, x, y, noise):
        loss, correct, grads = super()._loss_grads(x, y, noise)
        grads["dense_0/kernel"] = grads["dense_0/kernel"] * self.dtype(1.001)
        return loss, correct, grads


class FusedStepOff(numpy_tuned.Backend):
    """The tuned tier's fused training step moves the first kernel 1e-3 further than it should (its update scaled
    by 1.001: a gradient off by a thousandth), while its plain ``loss_and_grads`` stays right: only a rung that
    trains through the fused step can see it."""

    def _step(self, x, y, masks):
        before = self.params["dense_0/kernel"].copy()
        result = super()._step(x, y, masks)
        kernel = self.params["dense_0/kernel"]
        kernel += (kernel - before) * self.dtype(0.001)
        return result


class RaisesInLossGrads(numpy_stock.Backend):
    """A backend whose gradient call raises: the ladder must count it a failure, not pass over it."""

    def loss_and_grads(self, *, x, y, masks=None):
        raise RuntimeError("planted: loss_and_grads is broken")


def run_parity(argv, **kwargs) -> int:
    return cli.as_command(lambda: parity.run(parity.build_parser().parse_args(argv), argv, **kwargs))


def test_parity_on_numpy_writes_the_three_files_with_a_row_per_rung(tmp_path, capsys):
    out = tmp_path / "parity"
    assert run_parity(["--backend", "numpy", "--steps", "3", "--out", str(out)]) == 0
    assert "every rung passed" in capsys.readouterr().out
    rows = read_csv(out / "parity.csv")
    # rung 6 (concise == scratch) cannot fail where the two are one code, as NumPy's are: it does not run for it
    assert {r["rung"] for r in rows} == set(ladder.RUNGS) - {"concise_scratch"}
    assert {r["tuning"] for r in rows} == {"stock", "tuned"}
    assert all(r["status"] == "passed" and r["passed"] == "True" for r in rows)
    assert all(r["framework_version"] == np.__version__ and r["matmul_precision"] == "float32" for r in rows)
    steps = sorted({int(r["step"]) for r in rows if r["rung"] == "sgd_trajectory"})
    assert steps == [0, 1, 2]
    trajectories = {(r["impl"], r["noise"], r["weight_decay"]) for r in rows if r["rung"] == "sgd_trajectory"}
    assert len(trajectories) == 9 and len([r for r in rows if r["rung"] == "sgd_trajectory"]) == 2 * 27
    for r in rows:
        if r["criterion"] == "rel <= tol":
            assert float(r["max_rel_err"]) <= float(r["tolerance"]) <= 1e-5
    markdown = (out / "parity.md").read_text()
    assert "| numpy | stock | eager | pass |" in markdown and "| numpy | tuned | eager | pass |" in markdown
    assert "every rung passed" in markdown and "CPU:" in markdown
    assert (out / "parity.png").stat().st_size > 0
    assert json.loads((out / "meta.json").read_text())["steps"] == 3


def test_a_misscaled_dropout_mask_fails_parity_and_names_the_rungs(tmp_path, capsys):
    out = tmp_path / "broken"
    status = run_parity(["--backend", "numpy", "--tuning", "stock", "--noise", "dropout", "--impl", "concise",
                         "--steps", "2", "--out", str(out)], classes={"numpy": MisscaledDropout})
    console = capsys.readouterr().out
    assert status == 1
    assert "FAILED" in console and "rung 3 loss_grads" in console and "rung 4 sgd_trajectory" in console
    assert "rung 5 dropout_stats (survivors scaled by 1/(1-p))" in console
    rows = read_csv(out / "parity.csv")
    failed = {r["rung"] for r in rows if r["status"] == "failed"}
    assert {"loss_grads", "sgd_trajectory", "dropout_stats"} <= failed
    assert {"layout", "forward_eval", "epoch_no_noise", "evaluate_chunks"}.isdisjoint(failed)  # noise off: exact
    loss_grads = next(r for r in rows if r["rung"] == "loss_grads")
    assert float(loss_grads["max_rel_err"]) > 100 * float(loss_grads["tolerance"])
    assert "**FAIL**" in (out / "parity.md").read_text()


def _ladder(double, tuning, fashion):
    """The eager concise dropout ladder of one tier with ``double`` as NumPy's class: {rung: passed}."""
    make = BackendFactory(classes={"numpy": double})
    results = {case: case(make, fashion) for case in ladder.cases("numpy", modes=("eager",), impls=("concise",),
                                                                    noises=("dropout",), steps=2, tunings=(tuning,))}
    passed: dict[str, bool] = {}
    for case, checks in results.items():
        passed[case.rung] = passed.get(case.rung, True) and all(c.passed for c in checks)
    return passed, results


def test_a_gradient_off_by_a_thousandth_in_the_stock_step_fails_the_gradient_and_trajectory_rungs(fashion):
    passed, results = _ladder(GradientOff, "stock", fashion)
    assert not passed["loss_grads"] and not passed["sgd_trajectory"]
    assert passed["layout"] and passed["forward_eval"] and passed["evaluate_exact"]
    grad = next(c for case, checks in results.items() if case.rung == "loss_grads" for c in checks
                if c.what == "grad dense_0/kernel")
    assert not grad.passed and 5e-4 < grad.max_rel_err < 2e-3


def test_a_fused_step_off_by_a_thousandth_fails_the_trajectory_rung_of_the_tuned_tier(fashion):
    """The bug is in the step that trains the tuned tier; the gradient rung (plain code) cannot see it, the
    trajectory (which trains through the fused step) must."""
    passed, _ = _ladder(FusedStepOff, "tuned", fashion)
    assert passed["loss_grads"] and passed["forward_eval"]
    assert not passed["sgd_trajectory"]
    clean, _ = _ladder(numpy_tuned.Backend, "tuned", fashion)  # the same ladder passes the real tuned class
    assert all(clean.values()), clean


def test_a_rung_that_raises_fails_parity_and_is_named(tmp_path, capsys):
    out = tmp_path / "raises"
    status = run_parity(["--backend", "numpy", "--tuning", "stock", "--noise", "dropout", "--impl", "concise",
                         "--steps", "2", "--out", str(out)], classes={"numpy": RaisesInLossGrads})
    console = capsys.readouterr().out
    assert status == 1
    assert "FAILED" in console and "rung 3 loss_grads (RuntimeError: planted: loss_and_grads is broken" in console
    rows = read_csv(out / "parity.csv")
    errors = {r["rung"] for r in rows if r["status"] == "error"}
    assert "loss_grads" in errors, errors
    assert all("planted" in r["detail"] for r in rows if r["status"] == "error")
    assert all(r["status"] == "passed" for r in rows if r["rung"] in ("layout", "forward_eval"))


def test_an_unavailable_device_or_mode_is_a_row_and_nothing_checked_is_exit_1(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert run_parity(["--backend", "numpy", "--backend", "tensorflow", "--device", "gpu", "--out", str(out)]) == 1
    assert "nothing was checked" in capsys.readouterr().out
    rows = read_csv(out / "parity.csv")
    assert [(r["backend"], r["status"]) for r in rows] == [("numpy", "unavailable"), ("tensorflow", "unavailable")]
    assert "has no gpu device" in rows[0]["detail"]
    out = tmp_path / "compiled"
    assert run_parity(["--backend", "numpy", "--mode", "compiled", "--out", str(out)]) == 1
    assert read_csv(out / "parity.csv")[0]["detail"] == "numpy has no compiled mode (it offers eager)"


def test_torch_on_a_gpu_this_machine_lacks_is_an_unavailable_row(tmp_path, capsys):
    """torch offers gpu, but this machine has none: the backend's own reason, in a row, no crash."""
    from tests.conftest import require_backend

    require_backend("torch")
    out = tmp_path / "torch-gpu"
    assert run_parity(["--backend", "torch", "--device", "gpu", "--mode", "eager", "--out", str(out)]) in (0, 1)
    rows = read_csv(out / "parity.csv")
    if rows[0]["status"] == "unavailable":  # no CUDA here
        assert rows[0]["mode"] == "eager" and "device gpu needs CUDA" in rows[0]["detail"]
        assert "unavailable: torch stock eager: device gpu needs CUDA" in capsys.readouterr().out
    else:  # a GPU: the ladder ran in full float32
        assert all("allow_tf32=False" in r["matmul_precision"] for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be between 1 and 234"),
    (["--allow-tf32"], "--allow-tf32 applies to --device gpu only"),
    (["--backend", "nosuch"], "unknown backend 'nosuch'"),
    (["--noise", "salt"], "invalid choice: 'salt'"),
])
def test_bad_flags_are_one_line_and_exit_2(capsys, argv, message):
    assert cli.main(["parity", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_precision_setting_reaches_torch_and_jax():
    """In a fresh interpreter (the switches are process-wide): full float32 by default, TF32 when allowed."""
    script = """
import sys
from backends import is_available
from experiments.parity.factory import BackendFactory
for allow in (False, True):
    make = BackendFactory(allow_tf32=allow)
    for name in ("torch", "jax"):
        if is_available(name):
            print(name, allow, make(name).matmul_precision())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=backends.PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if backends.is_available("torch"):
        assert any(line.startswith("torch False cuda.matmul.allow_tf32=False cudnn.allow_tf32=False") for line in lines)
        assert any(line.startswith("torch True cuda.matmul.allow_tf32=True cudnn.allow_tf32=True") for line in lines)
    if backends.is_available("jax"):
        assert "jax False jax_default_matmul_precision=highest" in lines
        assert "jax True jax_default_matmul_precision=tensorfloat32" in lines
