"""MXNet-specific checks that the shared parity ladder cannot see, for both tiers (``stock``:
``backends.mxnet.backend``, ``tuned``: ``backends.mxnet.tuned``): the concise Dropout at p = 1 (Gluon's own gives
NaN), hybridized and eager training agreeing step by step (two batch shapes included), the one-line error for a
missing or misnamed MXNet venv, a real run through the runner in the MXNet worker, that the stock tier is Gluon as
documented (``nn.Dropout``, ``gluon.Trainer``, the default engine), and the tuned tier's ByteDropout and bound
compiled epoch.

This file runs in the MAIN venv and never imports mxnet: the backend is reached through its worker
(``backends.remote.RemoteBackend`` via the ``make_backend`` fixture, or the runner).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import backends
from backends import contract
from experiments import data
from experiments.catalog import build
from experiments.running.runner import RunOptions, run_experiment
from backends.contract.spec import ModelSpec, TrainSpec
from tests.conftest import require_backend

MODES = ("eager", "compiled")
IMPLS = ("concise", "scratch")
TUNINGS = ("stock", "tuned")


def run_in_mxnet_venv(script: str, *args: str, env: dict | None = None) -> dict:
    """Runs ``script`` under the MXNet venv's interpreter in a fresh process (one thread unless ``env`` says
    otherwise) and returns the JSON object its last line prints."""
    require_backend("mxnet")
    interpreter = backends.registry.resolve("mxnet").interpreter
    environment = {k: v for k, v in os.environ.items() if k != "MXNET_ENGINE_TYPE"}
    environment.update({"PYTHONPATH": str(backends.PROJECT_ROOT), "OMP_NUM_THREADS": "1", **(env or {})})
    result = subprocess.run([interpreter, "-c", script, *args], cwd=backends.PROJECT_ROOT, capture_output=True,
                            text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- (a) the concise layer at p = 1 -------------------------------------------------------------------------------
@pytest.mark.parametrize("tuning", TUNINGS)
@pytest.mark.parametrize("mode", MODES)
def test_concise_dropout_at_p1_gives_zeros_and_trains_without_nan(make_backend, fashion, mode, tuning):
    model = ModelSpec(impl="concise", dropouts=(1.0, 1.0))
    train = TrainSpec(mode=mode, weight_decay=1e-2, tuning=tuning)
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

    loss = backend.train_step(x=x, y=y)  # native noise, the tier's SGD (Trainer or sgd_update), weight decay on
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
@pytest.mark.parametrize("tuning", TUNINGS)
@pytest.mark.parametrize("noise", ("dropout", "dropconnect"))
@pytest.mark.parametrize("impl", IMPLS)
def test_compiled_and_eager_agree_step_by_step(make_backend, fashion, impl, noise, tuning):
    model = ModelSpec(impl=impl, noise=noise, dropouts=(0.3, 0.5))
    sizes = (256, 100, 256, 100)  # the compiled graph meets a second shape, and the first one again
    rng = np.random.default_rng(4)
    steps = [(start, size, contract.draw_masks(model, size, rng))
             for start, size in zip(np.cumsum((0,) + sizes[:-1]), sizes)]
    trajectories = {}
    for mode in MODES:
        backend = make_backend("mxnet", model=model, train=TrainSpec(mode=mode, weight_decay=5e-3, tuning=tuning))
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
    experiment = build("d2l", backends=["mxnet"], modes=MODES, tunings=TUNINGS, seeds=(0,),
                       train_overrides={"epochs": 1, "train_limit": 2000})
    options = RunOptions(data_dir=data.locate(download=False, progress=False), out_dir=tmp_path / "run", threads=1,
                         progress=False)
    rows = run_experiment(experiment, options)
    assert sorted((row["tuning"], row["mode"], row["status"]) for row in rows) == sorted(
        (tuning, mode, "ok") for tuning in TUNINGS for mode in MODES), [row.get("error") for row in rows]
    version = backends.framework_version("mxnet")
    assert version and version.startswith("1.9")
    for row in rows:
        assert row["backend"] == "mxnet" and row["framework_version"] == version
        assert row["epochs_completed"] == 1 and row["final_val_acc"] > 0.3, row


# --- (e) ByteDropout (tuned): the concise dropout's keep masks from MXNet's random bytes, through a table -----------
_BYTE_TABLE_PROBE = """
import json, sys
import numpy as onp
from mxnet import autograd, np
from backends.mxnet.tuned import ByteDropout
out = {}
for p in json.loads(sys.argv[1]):
    layer = ByteDropout(p, 256 * 8 // ByteDropout.bits_for(p))  # one row of bytes 0..255: every byte value once
    layer.initialize()
    draw = np.array(onp.arange(256, dtype=onp.int32)[None, :])
    with autograd.train_mode():
        eager = layer(np.ones((1, layer.width)), draw).asnumpy()
        layer.hybridize(static_alloc=True, static_shape=True)
        hybridized = layer(np.ones((1, layer.width)), draw).asnumpy()
    out[repr(p)] = [eager.ravel().tolist(), hybridized.ravel().tolist()]
drawn = ByteDropout(0.5, 256).draw(4096).asnumpy()
out["bytes"] = onp.bincount(drawn.ravel(), minlength=256).tolist()
from backends import registry
from backends.contract.spec import ModelSpec, TrainSpec
from backends.mxnet import probes
for tuning in ("stock", "tuned"):
    for rates in ((0.25, 0.25), (0.3, 0.3), (0.5, 0.3)):
        backend = registry.load_class("mxnet", tuning)(model=ModelSpec(impl="concise", dropouts=rates),
                                                       train=TrainSpec(mode="compiled", tuning=tuning))
        backend.build(seed=0)
        label, draw = probes.noise_probe(backend, batch_size=8)
        draw()
        out[tuning + repr(rates)] = [label, [type(layer).__name__ for layer in backend._noises]]
print(json.dumps(out))
"""


def test_byte_dropout_keeps_each_element_by_its_bits_of_one_byte_exactly():
    """Every byte value through ByteDropout's table (eager and hybridized): element i of byte k is kept, scaled by
    1 / (1 - p), exactly when bits [b i, b i + b) of k, read as an integer, are at least 2**b - j, for keep
    probabilities j / 2**b at b = 1, 2, 4 and 8; MXNet's ``randint(0, 256)`` bytes are uniform over 0..255; a tuned
    concise layer takes ByteDropout at such a rate and Gluon's Dropout at any other, a stock one Gluon's Dropout at
    every rate, and the bench's noise probe says which."""
    rates = [0.5, 0.25, 0.75, 1 - 3 / 16, 1 - 37 / 256]
    out = run_in_mxnet_venv(_BYTE_TABLE_PROBE, json.dumps(rates))
    for p in rates:
        bits, kept = contract.dyadic_keep(1 - p)
        per_byte = 8 // bits
        expected = [np.float32(1 / (1 - p)) if (k >> (bits * i)) & ((1 << bits) - 1) >= (1 << bits) - kept else 0.0
                    for k in range(256) for i in range(per_byte)]
        for name, got in zip(("eager", "hybridized"), out[repr(p)]):
            np.testing.assert_array_equal(np.float32(got), np.float32(expected), err_msg=f"p = {p} {name}")
        assert np.isclose(np.mean(np.array(expected) > 0), 1 - p), p
    counts = np.array(out["bytes"])
    assert counts.sum() == 4096 * 32
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())  # 255 degrees of freedom: mean 255, sd 22.6
    assert 255 - 5 * 22.6 < chi2 < 255 + 5 * 22.6, chi2
    bytes_label = "2 mt19937 bit(s) an element (ByteDropout: randint bytes, a table)"
    gluon_label = "Gluon Dropout (MXNet's CPU sampler)"
    assert out["tuned" + repr((0.25, 0.25))] == [bytes_label, ["ByteDropout", "ByteDropout"]]
    assert out["tuned" + repr((0.3, 0.3))] == [gluon_label, ["Dropout", "Dropout"]]
    assert out["tuned" + repr((0.5, 0.3))] == ["1 mt19937 bit(s) an element (ByteDropout: randint bytes, a table), "
                                               + gluon_label, ["ByteDropout", "Dropout"]]
    for rates in ((0.25, 0.25), (0.3, 0.3), (0.5, 0.3)):
        assert out["stock" + repr(rates)] == [gluon_label, ["Dropout", "Dropout"]], rates


@pytest.mark.parametrize("tuning", TUNINGS)
@pytest.mark.parametrize("p", (0.25, 0.75))
def test_concise_dropout_at_a_dyadic_rate_has_its_law_and_the_same_masks_in_both_modes(make_backend, fashion, p,
                                                                                        tuning):
    """The concise model's native masks at keep probability 3/4 and 1/4 (tuned: two bits an element; stock: Gluon's
    Dropout): each live unit kept with probability 1 - p, neighbours in a byte (lag 1) and the same bit of the next
    byte (lag 4) independent, survivors scaled by 1 / (1 - p); eager and compiled draw the same masks from the same
    seed."""
    model = ModelSpec(impl="concise", dropouts=(p, p))
    x = fashion.train_x[:4096]
    masks = {}
    for mode in MODES:
        backend = make_backend("mxnet", model=model, train=TrainSpec(mode=mode, tuning=tuning), seed=3)
        activations = backend.activations(x=x, train=True)
        pre, post = activations["hidden_1/pre_noise"], activations["hidden_1/post_noise"]
        alive = pre > 0
        np.testing.assert_allclose(post[alive & (post != 0)], pre[alive & (post != 0)] / (1 - p), rtol=1e-6)
        masks[mode] = (alive, post != 0)
    np.testing.assert_array_equal(masks["eager"][1], masks["compiled"][1])
    alive, kept = masks["compiled"]
    q = 1 - p
    n = int(alive.sum())
    assert abs(kept[alive].mean() - q) < 4 * np.sqrt(q * (1 - q) / n)
    for lag in (1, 4):
        both = alive[:, :-lag] & alive[:, lag:]
        pairs = (kept[:, :-lag] & kept[:, lag:])[both]
        assert abs(pairs.mean() - q * q) < 4 * np.sqrt(q * q * (1 - q * q) / pairs.size), lag


def test_the_compiled_epoch_draws_the_eager_epochs_bytes(make_backend, fashion):
    """Tuned tier: with native ByteDropout noise and the same seed, the bound compiled epoch and the eager one draw
    the same bytes step by step (the bound inputs are allocated without a draw), so they end at the same parameters
    up to the compiled update's rounding (lr folded into the backward pass: about 1e-7 a step); other masks would
    move them by far more."""
    batches = contract.EpochBatches(x=fashion.train_x[:768], y=fashion.train_y[:768], order=np.arange(768),
                                    batch_size=256)
    params = {}
    for mode in MODES:
        backend = make_backend("mxnet", model=ModelSpec(impl="concise"), train=TrainSpec(mode=mode, tuning="tuned"),
                               seed=5)
        backend.train_epoch(batches=batches)
        params[mode] = backend.get_params()
    for key, value in params["eager"].items():
        np.testing.assert_allclose(params["compiled"][key], value, rtol=0, atol=1e-5 * float(np.abs(value).max()),
                                   err_msg=key)


# --- (f) the stock tier is Gluon as its documentation teaches it; the tuned tier takes its own paths --------------
_TIER_PROBE = """
import json, os, sys
import numpy as onp
from backends import contract, registry
from backends.contract.spec import ModelSpec, TrainSpec
tuning, impl, mode = sys.argv[1:4]
backend_class = registry.load_class("mxnet", tuning)
model, train = ModelSpec(impl=impl), TrainSpec(mode=mode, tuning=tuning, weight_decay=1e-2)
backend = backend_class(model=model, train=train)
backend.build(seed=0, params=contract.shared_init(model, 0))
rng = onp.random.default_rng(0)
x, y = rng.random((300, 784), dtype=onp.float32), rng.integers(0, 10, 300)
masks = contract.draw_masks(model, 256, rng)
before = backend.get_params()
_, grads = backend.loss_and_grads(x=x[:256], y=y[:256], masks=masks)
backend.train_step(x=x[:256], y=y[:256], masks=masks)
after = backend.get_params()
trainer = getattr(backend, "_trainer", None)
updates = [trainer.optimizer.num_update if trainer else None]
backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=onp.arange(300), batch_size=256))  # two steps
updates.append(trainer.optimizer.num_update if trainer else None)
decay = {k: train.weight_decay * v if k.endswith("kernel") else 0.0 for k, v in before.items()}
expected = {k: before[k].astype(onp.float64) - train.lr * (grads[k] + decay[k]) for k in before}
blocks = []
def walk(block):
    blocks.append(block)
    for child in block._children.values():
        walk(child)
walk(backend._train_net)
print(json.dumps({
    "trainer": None if trainer is None else f"{type(trainer).__module__}.{type(trainer).__name__}",
    "optimizer": None if trainer is None else type(trainer.optimizer).__name__.lower(),
    "wd_mult": None if trainer is None else {p.name.split("_")[-1]: p.wd_mult for p in trainer._params},
    "updates": updates,
    "sgd_error": max(float(onp.abs(after[k] - expected[k]).max() / onp.abs(expected[k]).max()) for k in before),
    "moved": max(float(onp.abs(after[k] - before[k]).max() / onp.abs(before[k]).max()) for k in before),
    "net": type(backend._train_net).__name__,
    "blocks": sorted({f"{type(b).__module__}.{type(b).__name__}" for b in blocks}),
    "hybridized": bool(backend._train_net._active),
    "engine": os.environ.get("MXNET_ENGINE_TYPE"),
    "tuned_imported": "backends.mxnet.tuned" in sys.modules,
}))
"""


def every_core() -> dict[str, str]:
    """The thread count at which the tuned tier takes MXNet's naive engine: every core this process may use."""
    return {"OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                   else os.cpu_count() or 1)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_the_stock_tier_is_gluon_as_documented(impl, mode):
    """Stock: a ``gluon.Trainer`` with plain SGD steps it (one update a step, biases not decayed, ``step(1)`` on the
    mean loss: the update is exactly ``W - lr * (grad + wd W)``, which ``step(batch_size)`` would miss by the batch
    size); the concise training graph is D2L's chain with Gluon's ``nn.Dropout``, the scratch one the section's
    ``dropout_layer`` (``model.Noise``); compiled mode hybridizes it; MXNet's default engine runs it even at every
    core, and nothing of the tuned tier is imported."""
    out = run_in_mxnet_venv(_TIER_PROBE, "stock", impl, mode, env=every_core())
    assert out["trainer"] == "mxnet.gluon.trainer.Trainer" and out["optimizer"] == "sgd"
    assert out["wd_mult"] == {"weight": 1.0, "bias": 0.0}
    assert out["updates"] == [1, 3], "one Trainer update per step (train_step, then an epoch of two batches)"
    assert out["moved"] > 1e-4, "the step must move the parameters"
    assert out["sgd_error"] < 1e-6, f"the update is not W - lr * (grad + wd W): {out['sgd_error']:.3g}"
    if impl == "concise":
        assert out["net"] == "DropoutMLP" and "mxnet.gluon.nn.basic_layers.Dropout" in out["blocks"], out["blocks"]
    else:
        assert out["net"] == "DropoutMLPScratch" and "backends.mxnet.model.Noise" in out["blocks"], out["blocks"]
        assert "mxnet.gluon.nn.basic_layers.Dropout" not in out["blocks"]
    assert not any("tuned" in block for block in out["blocks"])
    assert out["hybridized"] == (mode == "compiled")
    assert out["engine"] is None and not out["tuned_imported"]


def test_the_tuned_tier_takes_its_own_paths_with_the_same_update():
    """Tuned: no Trainer (its own ``sgd_update`` over one buffer, the same update ``W - lr * (grad + wd W)``), the
    concise model's dropout at 0.5 is ByteDropout, and at every core the naive engine was chosen before MXNet
    loaded."""
    out = run_in_mxnet_venv(_TIER_PROBE, "tuned", "concise", "compiled", env=every_core())
    assert out["trainer"] is None and out["updates"] == [None, None]
    assert out["moved"] > 1e-4 and out["sgd_error"] < 1e-6, out
    assert "backends.mxnet.tuned.ByteDropout" in out["blocks"], out["blocks"]
    assert "mxnet.gluon.nn.basic_layers.Dropout" not in out["blocks"]
    assert out["hybridized"] and out["engine"] == "NaiveEngine" and out["tuned_imported"]
