"""TensorFlow-specific checks the shared parity ladder cannot see, for both tiers (``backends/tensorflow``).

- B1 (d2l-dropout.md): D2L's TF tab never switches dropout on. Here dropout must be active in the training step's own
  code paths (train_step and train_epoch, the whole-epoch tf.function of the tuned tier included), in both modes,
  and off in evaluate()/forward(train=False).
- compiled mode: same seed -> same run; no retrace after the first epoch; p = 1 gives zeros inside tf.function.
- weight decay: both tiers take the contract's law (kernels only), the stock tier through Keras' decoupled decay.
- the stock tier is stock: Keras' Sequential, Dense and Dropout, Keras' SGD doing the update, the jit_compile Keras'
  "auto" chooses (no XLA on this CPU-only machine), no XLA flag of ours; stock and tuned take the same steps.
- the tuned tier: BitDropout (the concise dropout under XLA on the CPU): the law of its bit masks, Keras' own output
  wherever it does not draw bits, and where it is used; XLA's fusion emitters chosen once a process.
- probes: what each tier and mode reports.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backends import contract, registry
from backends.contract.spec import ModelSpec, TrainSpec
from tests.conftest import require_backend
from tests.helpers import assert_close

require_backend("tensorflow", module_level=True)

NAME = "tensorflow"
MODES = ("eager", "compiled")
IMPLS = ("concise", "scratch")
TIERS = ("stock", "tuned")


def make(*, model: ModelSpec | None = None, train: TrainSpec | None = None, tuning: str = "stock", seed: int = 0,
         shared_init: bool = True, threads: int = 2):
    """A built backend of the tier ``tuning`` (the registry's class for it), from the shared init unless
    ``shared_init`` is False."""
    model = model or ModelSpec()
    train = dataclasses.replace(train or TrainSpec(), tuning=tuning)
    backend = registry.load_class(NAME, tuning)(model=model, train=train, threads=threads)
    backend.build(seed=seed, params=contract.shared_init(model, seed) if shared_init else None)
    return backend


def _batch(fashion, n=128, start=0):
    return fashion.train_x[start:start + n], fashion.train_y[start:start + n]


def _epoch_batches(fashion, n=600, seed=0, batch_size=256):
    x, y = fashion.train_x[:n], fashion.train_y[:n]
    return contract.EpochBatches(x=x, y=y, order=np.random.default_rng(seed).permutation(n), batch_size=batch_size)


def _ce(logits, y):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean())


# --- B1: dropout is really on in training, and off in evaluation ------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_b1_dropout_active_in_train_step(fashion, mode, impl, tier):
    x, y = _batch(fashion)
    start = contract.shared_init(ModelSpec(), 0)

    def two_steps_from_the_same_weights(p):
        backend = make(model=ModelSpec(impl=impl, dropouts=(p, p)), train=TrainSpec(mode=mode), tuning=tier)
        losses = []
        for _ in range(2):
            backend.set_params(params=start)
            losses.append(backend.train_step(x=x, y=y))
        return backend, losses

    backend, noisy = two_steps_from_the_same_weights(0.5)
    _, plain = two_steps_from_the_same_weights(0.0)
    assert noisy[0] != noisy[1], f"{mode}/{impl}: p = 0.5 gave the same loss twice: dropout is not active (B1)"
    assert plain[0] == plain[1], f"{mode}/{impl}: p = 0 must be deterministic"
    assert noisy[0] != plain[0] and noisy[1] != plain[0], "p = 0.5 gave the loss without dropout"
    # The p = 0 training loss is the plain network's loss.
    backend.set_params(params=start)
    assert abs(plain[0] - _ce(backend.forward(x=x, train=False), y)) < 1e-5


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("mode", MODES)
def test_b1_dropout_active_in_train_epoch(fashion, mode, tier):
    """The timed path (the tuned tier's compiled mode: the whole epoch as one tf.function) trains with dropout on."""
    start = contract.shared_init(ModelSpec(), 0)
    batches = _epoch_batches(fashion, n=512)

    def two_epochs_from_the_same_weights(p):
        backend = make(model=ModelSpec(dropouts=(p, p)), train=TrainSpec(mode=mode), tuning=tier)
        metrics = []
        for _ in range(2):
            backend.set_params(params=start)
            metrics.append(backend.train_epoch(batches=batches))
        return metrics

    noisy, plain = two_epochs_from_the_same_weights(0.5), two_epochs_from_the_same_weights(0.0)
    assert noisy[0].loss != noisy[1].loss, f"{mode}: train_epoch draws no new dropout masks"
    assert plain[0].loss == plain[1].loss
    assert noisy[0].loss != plain[0].loss and noisy[1].loss != plain[0].loss, "p = 0.5 trained without dropout"


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("mode", MODES)
def test_b1_no_dropout_in_evaluation(fashion, mode, tier):
    x, y = fashion.test_x[:1000], fashion.test_y[:1000]
    noisy = make(model=ModelSpec(dropouts=(0.5, 0.5)), train=TrainSpec(mode=mode), tuning=tier)
    plain = make(model=ModelSpec(dropouts=(0.0, 0.0)), train=TrainSpec(mode=mode), tuning=tier)
    first, second = noisy.forward(x=x, train=False), noisy.forward(x=x, train=False)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, plain.forward(x=x, train=True), rtol=1e-6, atol=1e-6)
    assert not np.allclose(noisy.forward(x=x, train=True), first), "train=True must apply dropout"
    evaluations = [noisy.evaluate(x=x, y=y) for _ in range(2)]
    assert evaluations[0] == evaluations[1], "evaluate() must be deterministic (noise off)"
    assert abs(evaluations[0].loss - _ce(first, y)) < 1e-5
    assert abs(evaluations[0].acc - float(np.mean(first.argmax(axis=1) == y))) < 1e-12


@pytest.mark.parametrize("tier", TIERS)
def test_concise_draws_from_its_keras_dropout_inside_tf_function(fashion, tier):
    """In compiled mode the concise step draws from its Keras Dropout layers (their SeedGenerator advances per step),
    never from the generator of the scratch model and the other noise kinds."""
    x, y = _batch(fashion)
    backend = make(model=ModelSpec(impl="concise"), train=TrainSpec(mode="compiled"), tuning=tier)
    layer = backend.net.dropout_layers()[0]
    states = [layer.seed_generator.state.numpy().copy()]
    for _ in range(2):
        backend.train_step(x=x, y=y)
        states.append(layer.seed_generator.state.numpy().copy())
    assert not np.array_equal(states[0], states[1]) and not np.array_equal(states[1], states[2])
    generator_state = backend.generator.state.numpy().copy()
    backend.train_step(x=x, y=y)
    np.testing.assert_array_equal(backend.generator.state.numpy(), generator_state,
                                  err_msg="concise dropout must not draw from the scratch generator")


# --- compiled mode: reproducibility, tracing, p = 1 -------------------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", IMPLS)
def test_compiled_same_seed_same_run(fashion, impl, tier):
    batches = [_epoch_batches(fashion, n=600, seed=s) for s in (0, 1)]

    def run(seed):
        backend = make(model=ModelSpec(impl=impl, init="framework"), train=TrainSpec(mode="compiled"), tuning=tier,
                       seed=seed, shared_init=False)
        metrics = [backend.train_epoch(batches=b) for b in batches]
        metrics.append(backend.train_step(x=fashion.train_x[:64], y=fashion.train_y[:64]))
        return metrics, backend.get_params()

    metrics, params = run(1)
    metrics_again, params_again = run(1)
    assert metrics == metrics_again, "the same seed must reproduce the same compiled run"
    for key in params:
        np.testing.assert_array_equal(params[key], params_again[key], err_msg=key)
    metrics_other, _ = run(2)
    assert metrics_other != metrics


@pytest.mark.parametrize("tier", TIERS)
def test_compiled_no_retrace_after_first_epoch(fashion, tier):
    backend = make(train=TrainSpec(mode="compiled"), tuning=tier)
    # The functions an epoch runs: the tuned tier's whole-epoch loop and last batch, the stock tier's step.
    functions = ["_epoch_full", "_batch_at"] if tier == "tuned" else ["_step_native"]
    x_all, y_all = fashion.train_x[:1000], fashion.train_y[:1000]  # 3 full batches and a partial one of 232
    for epoch in range(3):
        order = np.random.default_rng(epoch).permutation(1000)
        backend.train_epoch(batches=contract.EpochBatches(x=x_all, y=y_all, order=order, batch_size=256))
        backend.evaluate(x=fashion.test_x[:500], y=fashion.test_y[:500])
        if epoch == 0:
            after_first = backend.trace_count
            concrete = [getattr(backend, f).experimental_get_tracing_count() for f in functions]
    assert after_first > 0, "compiled mode traced nothing: it is not running a tf.function"
    assert backend.trace_count == after_first, f"retraced: {after_first} traces, then {backend.trace_count}"
    assert [getattr(backend, f).experimental_get_tracing_count() for f in functions] == concrete
    # A new data set of another size and a new batch count do not retrace either (None dimensions).
    backend.train_epoch(batches=_epoch_batches(fashion, n=777, seed=5))
    assert backend.trace_count == after_first
    eager = make(train=TrainSpec(mode="eager"), tuning=tier)
    eager.train_epoch(batches=_epoch_batches(fashion, n=300))
    assert eager.trace_count == 0, "eager mode must not build tf.functions"


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", IMPLS)
def test_compiled_p1_gives_zeros(fashion, impl, tier):
    x, y = _batch(fashion, n=256)
    backend = make(model=ModelSpec(impl=impl, dropouts=(1.0, 1.0)), train=TrainSpec(mode="compiled"), tuning=tier)
    start = backend.get_params()
    loss, grads = backend.loss_and_grads(x=x, y=y)  # a tf.function in compiled mode
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    for key in ("dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias", "dense_2/kernel"):
        np.testing.assert_array_equal(grads[key], 0, err_msg=f"{key}: nothing passes p = 1")
    # Nothing reaches the output layer: the logits are its bias, in the step and in the epoch's functions.
    only_bias = np.broadcast_to(start["dense_2/bias"], (len(x), 10))
    assert abs(backend.train_step(x=x, y=y) - _ce(only_bias, y)) < 1e-5
    metrics = backend.train_epoch(batches=_epoch_batches(fashion, n=600))
    assert np.isfinite(metrics.loss)
    after = backend.get_params()
    for key in ("dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias", "dense_2/kernel"):
        np.testing.assert_array_equal(after[key], start[key], err_msg=f"{key} moved through p = 1")
    assert not np.array_equal(after["dense_2/bias"], start["dense_2/bias"])


# --- weight decay, and the two tiers' steps ---------------------------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("mode", MODES)
def test_a_step_with_weight_decay_takes_the_contracts_law(fashion, mode, tier):
    """One step from W with injected masks: each kernel moves by lr * (g + wd * W), each bias by lr * g, g the
    gradient at W (the stock tier through Keras' decoupled ``W -= W * wd * lr`` then ``W -= g * lr``). A large wd makes
    the decay term dominate, so that decay left out, or put on the biases, misses by far more than float32's
    rounding of the difference W - W'."""
    lr, wd = 0.1, 0.5
    model = ModelSpec(dropouts=(0.3, 0.5))
    x, y = _batch(fashion, n=64)
    masks = contract.draw_masks(model, 64, np.random.default_rng(7))
    backend = make(model=model, train=TrainSpec(mode=mode, lr=lr, weight_decay=wd), tuning=tier)
    before = backend.get_params()
    _, grads = backend.loss_and_grads(x=x, y=y, masks=masks)
    backend.train_step(x=x, y=y, masks=masks)
    after = backend.get_params()
    for key, value in before.items():
        moved = (value.astype(np.float64) - after[key]) / lr
        expected = grads[key] + (wd * value.astype(np.float64) if key.endswith("kernel") else 0.0)
        assert_close(moved, expected, f"{tier}/{mode}: {key}'s step over lr", rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_stock_and_tuned_take_the_same_steps(fashion, mode):
    """Five steps with the same injected masks (and weight decay): the two tiers' parameters agree to float32
    rounding; both tiers are the same law."""
    model = ModelSpec(dropouts=(0.3, 0.5))
    train = TrainSpec(mode=mode, weight_decay=5e-3)
    stock, tuned = make(model=model, train=train, tuning="stock"), make(model=model, train=train, tuning="tuned")
    rng = np.random.default_rng(3)
    for step in range(5):
        x, y = _batch(fashion, n=256, start=256 * step)
        masks = contract.draw_masks(model, 256, rng)
        assert_close(stock.train_step(x=x, y=y, masks=masks), tuned.train_step(x=x, y=y, masks=masks), f"loss {step}")
    tuned_params = tuned.get_params()
    for key, value in stock.get_params().items():
        assert_close(value, tuned_params[key], f"{mode}: {key} after five steps")


# --- the stock tier is Keras as its documentation teaches it ----------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_the_stock_tier_is_keras_layers_and_a_keras_sgd(fashion, mode):
    """The concise model is D2L's Sequential of Keras' own Dense and Dropout (on two threads too, where the tuned
    tier's compiled mode takes BitDropout); Keras' SGD does every update (its iteration counter counts the steps),
    with the decay Keras was given; compiled mode takes the jit_compile Keras' "auto" chose, which on this CPU-only
    TF is no XLA."""
    import keras
    import tensorflow as tf

    backend = make(train=TrainSpec(mode=mode, weight_decay=5e-3), tuning="stock", threads=2)
    assert isinstance(backend.net, keras.Model) and type(backend.net.net) is keras.Sequential
    kinds = [type(layer) for layer in backend.net.net.layers]
    assert kinds == [keras.layers.Flatten, keras.layers.Dense, keras.layers.Dropout, keras.layers.Dense,
                     keras.layers.Dropout, keras.layers.Dense]
    assert type(backend.optimizer) is keras.optimizers.SGD and backend.net.optimizer is backend.optimizer
    assert backend.optimizer.weight_decay == 5e-3 and backend.optimizer.momentum == 0
    x, y = _batch(fashion)
    backend.train_step(x=x, y=y)
    backend.train_epoch(batches=_epoch_batches(fashion, n=600))  # three batches
    assert int(backend.optimizer.iterations.numpy()) == 4
    assert backend.jit_compile == (mode == "compiled" and bool(backend.net.jit_compile))
    if not [d for d in tf.config.list_physical_devices() if d.device_type != "CPU"]:
        assert backend.jit_compile is False, "Keras' auto takes no XLA on a CPU-only machine"


def test_the_stock_scratch_model_draws_the_sections_dropout_layer_from_its_generator(fashion):
    """The scratch model has no Keras Dropout: its masks come from ``dropout_layer`` on the model's generator, whose
    state advances with every training call and stays put in evaluation."""
    import keras

    backend = make(model=ModelSpec(impl="scratch"), tuning="stock")
    assert not [layer for layer in backend.net.layers if isinstance(layer, keras.layers.Dropout)]
    x = fashion.train_x[:64]
    state = backend.generator.state.numpy().copy()
    backend.forward(x=x, train=False)
    np.testing.assert_array_equal(backend.generator.state.numpy(), state)
    backend.forward(x=x, train=True)
    assert not np.array_equal(backend.generator.state.numpy(), state)


XLA_PROBE = """
import json, os, sys

import numpy as np
from backends import contract, registry
from backends.contract.spec import ModelSpec, TrainSpec

dump, tuning, impls = sys.argv[1], sys.argv[2], sys.argv[3:]
# Added after the import: XLA reads XLA_FLAGS at its first compilation, which is why the tuned tier chooses at __init__.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_dump_to=" + dump).strip()
backend_class = registry.load_class("tensorflow", tuning)
backends = [backend_class(model=ModelSpec(impl=impl), train=TrainSpec(mode="compiled", batch_size=32, tuning=tuning),
                          threads=2) for impl in impls]
backends[0].build(seed=0)
n = 64
backends[0].train_epoch(batches=contract.EpochBatches(x=np.zeros((n, 784), np.float32), y=np.zeros(n, np.int32),
                                                      order=np.arange(n), batch_size=32))
print(json.dumps({"flags": os.environ["XLA_FLAGS"], "dumped": len(os.listdir(dump))}))
"""


@pytest.mark.parametrize("tuning, impls, user_flags, expected", [
    ("stock", ("scratch", "concise"), "", None),  # no flag of ours, and nothing compiled by XLA
    ("tuned", ("concise", "scratch"), "", None),  # the first model's choice stands for the process
    ("tuned", ("scratch", "concise"), "", "false"),
    ("tuned", ("scratch",), "--xla_cpu_use_fusion_emitters=true", "true"),  # a user's own setting stands
])
def test_xla_flags_and_compilation_by_tier(tmp_path, tuning, impls, user_flags, expected):
    """The tuned tier's first model under XLA chooses the fusion emitters before XLA reads its flags (and XLA
    compiles the epoch); the stock tier, two threads and compiled mode included, sets no XLA flag and XLA compiles
    nothing."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(registry.PROJECT_ROOT), CUDA_VISIBLE_DEVICES="", **({"XLA_FLAGS": user_flags}
                                                                                 if user_flags else {}))
    run = subprocess.run([sys.executable, "-c", XLA_PROBE, str(tmp_path), tuning, *impls], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    probe = json.loads(run.stdout.strip().splitlines()[-1])
    settings = [flag.split("=", 1)[1] for flag in probe["flags"].split() if "xla_cpu_use_fusion_emitters" in flag]
    assert settings == ([] if expected is None else [expected]), probe["flags"]
    if tuning == "stock":
        assert probe["flags"] == f"--xla_dump_to={tmp_path}" and probe["dumped"] == 0, probe
    else:
        assert probe["dumped"] > 0, "XLA did not read XLA_FLAGS at its first compilation"


# --- the tuned tier's BitDropout: Keras' Dropout with its mask from a few Philox bits under XLA -----------------------
@pytest.mark.parametrize("q", [0.5, 0.25, 0.75, 3 / 16, 0.7])
def test_keep_masks_from_bits_have_the_law_of_a_uniform_at_least_the_rate(q):
    """Under XLA, bits or Keras' uniform test: each element kept with probability q, neighbours independent (in one
    word and across words: the pair (i, i + 1) kept with probability q**2), the same seed the same mask."""
    import tensorflow as tf

    from backends.tensorflow import tuned

    draw = tf.function(lambda seed: tuned.keep_mask(seed, q, (1000, 301)), jit_compile=True)  # no whole words
    keep = draw(tf.constant([7, 1], tf.int32)).numpy()
    assert keep.shape == (1000, 301) and keep.dtype == bool
    flat, n = keep.ravel().astype(np.float64), keep.size
    assert abs(flat.mean() - q) < 4 * np.sqrt(q * (1 - q) / n)
    pairs = (flat[:-1] * flat[1:]).mean()
    assert abs(pairs - q * q) < 4 * np.sqrt(q * q * (1 - q * q) / (n - 1))
    assert np.array_equal(keep, draw(tf.constant([7, 1], tf.int32)).numpy())
    assert not np.array_equal(keep, draw(tf.constant([7, 2], tf.int32)).numpy())


def test_bit_dropout_is_keras_dropout_but_for_how_a_dyadic_mask_is_drawn():
    """Under XLA, at a rate whose keep probability is not j / 2**b, at rates 0 and 1 and in evaluation, BitDropout
    gives Keras' Dropout's output to the bit; at 0.5 it keeps the elements of ``keep_mask`` at the seed Keras' own
    dropout would take from the layer's SeedGenerator, scaled by 2, and zeroes the others; both generators advance
    alike."""
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow.random import _cast_seed
    from keras.src.random.seed_generator import draw_seed

    from backends.tensorflow import tuned

    x = tf.constant(np.random.default_rng(0).standard_normal((64, 48)) + 3.0, tf.float32)

    def run(layer, training=True):
        return tf.function(lambda: layer(x, training=training), jit_compile=True)().numpy()
    for rate in (0.3, 0.0, 1.0):
        assert np.array_equal(run(tuned.BitDropout(rate, seed=5)), run(keras.layers.Dropout(rate, seed=5))), rate
    assert np.array_equal(run(tuned.BitDropout(0.5, seed=5), training=False), x.numpy())
    bit, twin = tuned.BitDropout(0.5, seed=5), keras.layers.Dropout(0.5, seed=5)
    seed = _cast_seed(draw_seed(twin.seed_generator))
    keep = tf.function(lambda: tuned.keep_mask(seed, 0.5, x.shape), jit_compile=True)().numpy()
    got = run(bit)
    assert np.array_equal(got, np.where(keep, x.numpy() * 2.0, 0.0))
    assert 0.4 < keep.mean() < 0.6
    assert np.array_equal(bit.seed_generator.state.numpy(), twin.seed_generator.state.numpy())


def test_the_concise_model_takes_bit_dropout_only_in_the_tuned_tier_under_xla():
    """The tuned tier's compiled mode on more than one thread runs under XLA and takes BitDropout; its eager mode
    keeps Keras' Dropout, so that eager and the plain graph stay on one stream; the stock tier keeps Keras' Dropout
    in every mode."""
    import keras

    from backends.tensorflow import tuned

    def dropout_kinds(mode, tier):
        backend = make(train=TrainSpec(mode=mode), tuning=tier, threads=2)
        return {type(layer) for layer in backend.net.dropout_layers()}
    assert dropout_kinds("compiled", "tuned") == {tuned.BitDropout}
    assert dropout_kinds("eager", "tuned") == {keras.layers.Dropout}
    assert dropout_kinds("compiled", "stock") == {keras.layers.Dropout}


def test_only_a_model_whose_draws_are_all_bit_dropouts_counts_as_bit_draws_only():
    from backends.tensorflow import tuned

    assert tuned.bit_draws_only(ModelSpec())  # D2L's 0.5 and 0.5
    assert tuned.bit_draws_only(ModelSpec(dropouts=(0.25, 0.75)))
    assert tuned.bit_draws_only(ModelSpec(impl="scratch", dropouts=(0.0, 0.0)))  # no draw at all
    assert not tuned.bit_draws_only(ModelSpec(dropouts=(0.2, 0.5)))  # Keras' own uniform at 0.2
    assert not tuned.bit_draws_only(ModelSpec(dropouts=(1.0, 0.5)))
    assert not tuned.bit_draws_only(ModelSpec(impl="scratch"))
    assert not tuned.bit_draws_only(ModelSpec(noise="gaussian"))


# --- probes: what each tier and mode runs -----------------------------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("mode", MODES)
def test_probes_report_what_each_tier_and_mode_runs(tier, mode):
    """XLA's library and the bit-drawn masks only where the tuned tier's compiled mode runs under XLA (two threads);
    TF's MatMul kernel and Keras' own Dropout elsewhere. The step probe computes its products (the operands it draws
    from ``default_rng(0)``, one round after another), and the noise probe drops about half of each array."""
    probes = registry.load_probes(NAME)
    backend = make(model=ModelSpec(hiddens=(24, 16)), train=TrainSpec(mode=mode, batch_size=8), tuning=tier,
                   threads=2)
    xla = tier == "tuned" and mode == "compiled"
    library = probes.gemm_library(backend, m=8, k=784, n=24)
    assert library.startswith("XLA ") if xla else library.endswith("(TF MatMul)"), library
    products = [{"m": 8, "k": 784, "n": 24, "ta": False, "tb": False}, {"m": 24, "k": 8, "n": 16, "ta": True,
                                                                         "tb": False}]
    rng = np.random.default_rng(0)
    operands = [[rng.standard_normal(shape).astype(np.float32) for shape in contract.held_operand_shapes(p)]
                for p in products]
    results = [np.asarray(r) for r in probes.gemm_step_probe(backend, products=products, rounds=3)()]
    assert_close(results[0], operands[0][0].astype(np.float64) @ operands[0][1], "x @ W", rtol=1e-5)
    assert_close(results[1], operands[1][0].T.astype(np.float64) @ operands[1][1], "a^T @ b", rtol=1e-5)
    label, draw = probes.noise_probe(backend, batch_size=64)
    expected = "Keras Dropout, 1 Philox bit(s) an element under XLA" if xla else "Keras Dropout (stateless Philox)"
    assert label == expected
    for array in draw():
        assert array.shape[0] == 64 and 0.3 < float(np.mean(array == 0)) < 0.7
