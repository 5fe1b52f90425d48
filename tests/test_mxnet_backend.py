"""MXNet-specific checks that the shared parity ladder cannot see: the concise Dropout at p = 1 (Gluon's own gives NaN),
hybridized and eager training agreeing step by step (two batch shapes included), the one-line error for a missing or
misnamed MXNet venv, and a real run through the runner in the MXNet worker.

This file runs in the MAIN venv and never imports mxnet: the backend is reached through its worker
(``backends.remote.RemoteBackend`` via the ``make_backend`` fixture, or the runner).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import backends
from backends import contract
from experiments import data
from experiments.catalog import build
from experiments.runner import RunOptions, run_experiment
from backends.contract.spec import ModelSpec, TrainSpec
from tests.conftest import require_backend

MODES = ("eager", "compiled")
IMPLS = ("concise", "scratch")


# --- (a) the concise layer at p = 1 -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_concise_dropout_at_p1_gives_zeros_and_trains_without_nan(make_backend, fashion, mode):
    model = ModelSpec(impl="concise", dropouts=(1.0, 1.0))
    train = TrainSpec(mode=mode, weight_decay=1e-2)
    backend = make_backend("mxnet", model=model, train=train)
    x, y = fashion.train_x[:300], fashion.train_y[:300]

    activations = backend.activations(x=x, train=True)
    for layer in range(2):
        pre, post = activations[f"hidden_{layer}/pre_noise"], activations[f"hidden_{layer}/post_noise"]
        if layer == 0:
            assert np.any(pre > 0), "the check needs live units"
        assert np.all(np.isfinite(post)) and np.all(post == 0), f"layer {layer}: p = 1 must give zeros, not NaN"

    before = backend.get_params()
    logits = backend.forward(x=x, train=True)  # nothing reaches the last layer: every row is its bias
    np.testing.assert_array_equal(logits, np.broadcast_to(before["dense_2/bias"], logits.shape))
    evaluated = backend.forward(x=x, train=False)  # evaluation keeps every unit
    assert np.all(np.isfinite(evaluated)) and not np.allclose(evaluated, before["dense_2/bias"])

    loss = backend.train_step(x=x, y=y)  # native noise, the backend's sgd_update, weight decay on
    after = backend.get_params()
    assert np.isfinite(loss) and all(np.all(np.isfinite(v)) for v in after.values())
    shrink = 1.0 - train.lr * train.weight_decay  # zero data gradient: the kernels only decay, and are still updated
    for key in ("dense_0/kernel", "dense_1/kernel", "dense_2/kernel"):
        np.testing.assert_allclose(after[key], before[key] * shrink, rtol=1e-6, atol=1e-9, err_msg=key)
    np.testing.assert_array_equal(after["dense_0/bias"], before["dense_0/bias"], err_msg="biases are not decayed")

    batches = contract.EpochBatches(x=x, y=y, order=np.arange(300), batch_size=256)  # a full and a partial batch
    metrics = backend.train_epoch(batches=batches)
    assert np.isfinite(metrics.loss) and 0 <= metrics.acc <= 1


# --- (b) hybridized and eager: the same parameters after the same injected steps ----------------------------------
@pytest.mark.parametrize("noise", ("dropout", "dropconnect"))
@pytest.mark.parametrize("impl", IMPLS)
def test_compiled_and_eager_agree_step_by_step(make_backend, fashion, impl, noise):
    model = ModelSpec(impl=impl, noise=noise, dropouts=(0.3, 0.5))
    sizes = (256, 100, 256, 100)  # the compiled graph meets a second shape, and the first one again
    rng = np.random.default_rng(4)
    steps = [(start, size, contract.draw_masks(model, size, rng))
             for start, size in zip(np.cumsum((0,) + sizes[:-1]), sizes)]
    trajectories = {}
    for mode in MODES:
        backend = make_backend("mxnet", model=model, train=TrainSpec(mode=mode, weight_decay=5e-3))
        trajectory = []
        for start, size, masks in steps:
            x, y = fashion.train_x[start:start + size], fashion.train_y[start:start + size]
            loss = backend.train_step(x=x, y=y, masks=masks)
            trajectory.append((loss, backend.get_params()))
        trajectories[mode] = trajectory
    for step, ((loss_e, params_e), (loss_c, params_c)) in enumerate(zip(*trajectories.values())):
        np.testing.assert_allclose(loss_c, loss_e, rtol=1e-6, err_msg=f"step {step} loss")
        for key, value in params_e.items():
            scale = float(np.abs(value).max())
            error = float(np.abs(params_c[key] - value).max())
            assert error <= 1e-6 * scale, f"step {step} {key}: compiled differs from eager by {error:.3g}"
    first, last = trajectories["eager"][0][1], trajectories["eager"][-1][1]
    assert not np.array_equal(first["dense_0/kernel"], last["dense_0/kernel"]), "the steps must train"


# --- (c) a missing or misnamed venv -------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ("missing", "without-mxnet"))
def test_missing_venv_is_a_one_line_error_with_the_fix(monkeypatch, tmp_path, where):
    if where == "missing":
        interpreter = str(tmp_path / "no-such-venv" / "bin" / "python")
    else:  # a Python that exists but has no mxnet: this very interpreter (the main venv)
        if importlib.util.find_spec("mxnet") is not None:
            pytest.skip("this interpreter has mxnet")
        interpreter = sys.executable
    monkeypatch.setenv("DROPBENCH_MXNET_PYTHON", interpreter)
    backends.framework_version.cache_clear()
    try:
        assert not backends.is_available("mxnet")
        out = tmp_path / "out"
        command = [sys.executable, "harness.py", "--backend", "mxnet", "--epochs", "1", "--out", str(out)]
        result = subprocess.run(command, cwd=backends.PROJECT_ROOT, env=dict(os.environ), capture_output=True,
                                text=True, timeout=120)
    finally:
        backends.framework_version.cache_clear()  # the next caller re-reads the restored environment
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error:") and "mxnet" in lines[0] and interpreter in lines[0], lines[0]
    assert "make mxnet-venv" in lines[0] and "DROPBENCH_MXNET_PYTHON" in lines[0], "the error must name the fix"
    assert not out.exists(), "nothing runs when the backend is missing"


# --- (d) a short real run through the runner ------------------------------------------------------------------------
def test_short_run_through_the_runner_reports_mxnet(tmp_path):
    require_backend("mxnet")
    experiment = build("d2l", backends=["mxnet"], modes=MODES, seeds=(0,),
                       train_overrides={"epochs": 1, "train_limit": 2000})
    options = RunOptions(data_dir=data.locate(download=False, progress=False), out_dir=tmp_path / "run", threads=1,
                         progress=False)
    rows = run_experiment(experiment, options)
    assert [(row["mode"], row["status"]) for row in rows] == [("eager", "ok"), ("compiled", "ok")], \
        [row.get("error") for row in rows]
    version = backends.framework_version("mxnet")
    assert version and version.startswith("1.9")
    for row in rows:
        assert row["backend"] == "mxnet" and row["framework_version"] == version
        assert row["epochs_completed"] == 1 and row["final_val_acc"] > 0.3, row
