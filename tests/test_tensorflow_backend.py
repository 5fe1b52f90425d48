"""TensorFlow-specific checks the shared parity ladder cannot see.

- B1 (d2l-dropout.md): D2L's TF tab never switches dropout on. Here dropout must be active in the training step's own
  code paths (train_step and the whole-epoch tf.function), in both modes, and off in evaluate()/forward(train=False).
- compiled mode: same seed -> same run; no retrace after the first epoch; p = 1 gives zeros in the concise (Keras
  Dropout) path inside tf.function.
- BitDropout (the concise dropout under XLA on the CPU): the law of its one-bit masks, Keras' own output wherever it
  does not draw bits, and where the backend uses it.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from backends import contract
from backends.contract.spec import ModelSpec, TrainSpec

NAME = "tensorflow"
MODES = ("eager", "compiled")


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
@pytest.mark.parametrize("impl", ("concise", "scratch"))
@pytest.mark.parametrize("mode", MODES)
def test_b1_dropout_active_in_train_step(make_backend, fashion, mode, impl):
    x, y = _batch(fashion)
    start = contract.shared_init(ModelSpec(), 0)

    def two_steps_from_the_same_weights(p):
        backend = make_backend(NAME, model=ModelSpec(impl=impl, dropouts=(p, p)), train=TrainSpec(mode=mode))
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


@pytest.mark.parametrize("mode", MODES)
def test_b1_dropout_active_in_train_epoch(make_backend, fashion, mode):
    """The timed path (in compiled mode: the whole epoch as one tf.function) trains with dropout on."""
    start = contract.shared_init(ModelSpec(), 0)
    batches = _epoch_batches(fashion, n=512)

    def two_epochs_from_the_same_weights(p):
        backend = make_backend(NAME, model=ModelSpec(dropouts=(p, p)), train=TrainSpec(mode=mode))
        metrics = []
        for _ in range(2):
            backend.set_params(params=start)
            metrics.append(backend.train_epoch(batches=batches))
        return metrics

    noisy, plain = two_epochs_from_the_same_weights(0.5), two_epochs_from_the_same_weights(0.0)
    assert noisy[0].loss != noisy[1].loss, f"{mode}: train_epoch draws no new dropout masks"
    assert plain[0].loss == plain[1].loss
    assert noisy[0].loss != plain[0].loss and noisy[1].loss != plain[0].loss, "p = 0.5 trained without dropout"


@pytest.mark.parametrize("mode", MODES)
def test_b1_no_dropout_in_evaluation(make_backend, fashion, mode):
    x, y = fashion.test_x[:1000], fashion.test_y[:1000]
    noisy = make_backend(NAME, model=ModelSpec(dropouts=(0.5, 0.5)), train=TrainSpec(mode=mode))
    plain = make_backend(NAME, model=ModelSpec(dropouts=(0.0, 0.0)), train=TrainSpec(mode=mode))
    first, second = noisy.forward(x=x, train=False), noisy.forward(x=x, train=False)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, plain.forward(x=x, train=True), rtol=1e-6, atol=1e-6)
    assert not np.allclose(noisy.forward(x=x, train=True), first), "train=True must apply dropout"
    evaluations = [noisy.evaluate(x=x, y=y) for _ in range(2)]
    assert evaluations[0] == evaluations[1], "evaluate() must be deterministic (noise off)"
    assert abs(evaluations[0].loss - _ce(first, y)) < 1e-5
    assert abs(evaluations[0].acc - float(np.mean(first.argmax(axis=1) == y))) < 1e-12


def test_concise_uses_keras_dropout_inside_tf_function(make_backend, fashion):
    """In compiled mode the concise step draws from Keras' own Dropout (its SeedGenerator advances per step)."""
    x, y = _batch(fashion)
    backend = make_backend(NAME, model=ModelSpec(impl="concise"), train=TrainSpec(mode="compiled"))
    states = [backend.dropout_layers[0].seed_generator.state.numpy().copy()]
    for _ in range(2):
        backend.train_step(x=x, y=y)
        states.append(backend.dropout_layers[0].seed_generator.state.numpy().copy())
    assert not np.array_equal(states[0], states[1]) and not np.array_equal(states[1], states[2])
    generator_state = backend.generator.state.numpy().copy()
    backend.train_step(x=x, y=y)
    np.testing.assert_array_equal(backend.generator.state.numpy(), generator_state,
                                  err_msg="concise dropout must not draw from the scratch generator")


# --- compiled mode: reproducibility, tracing, p = 1 -------------------------------------------------------------------
@pytest.mark.parametrize("impl", ("concise", "scratch"))
def test_compiled_same_seed_same_run(make_backend, fashion, impl):
    batches = [_epoch_batches(fashion, n=600, seed=s) for s in (0, 1)]

    def run(seed):
        backend = make_backend(NAME, model=ModelSpec(impl=impl, init="framework"), train=TrainSpec(mode="compiled"),
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


def test_compiled_no_retrace_after_first_epoch(make_backend, fashion):
    backend = make_backend(NAME, model=ModelSpec(), train=TrainSpec(mode="compiled"))
    x_all, y_all = fashion.train_x[:1000], fashion.train_y[:1000]  # 3 full batches and a partial one of 232
    for epoch in range(3):
        order = np.random.default_rng(epoch).permutation(1000)
        backend.train_epoch(batches=contract.EpochBatches(x=x_all, y=y_all, order=order, batch_size=256))
        backend.evaluate(x=fashion.test_x[:500], y=fashion.test_y[:500])
        if epoch == 0:
            after_first = backend.trace_count
            concrete = (backend._epoch_full.experimental_get_tracing_count(),
                        backend._batch_at.experimental_get_tracing_count())
    assert after_first > 0, "compiled mode traced nothing: it is not running a tf.function"
    assert backend.trace_count == after_first, f"retraced: {after_first} traces, then {backend.trace_count}"
    assert (backend._epoch_full.experimental_get_tracing_count(),
            backend._batch_at.experimental_get_tracing_count()) == concrete
    # A new data set of another size and a new batch count do not retrace either (None dimensions).
    backend.train_epoch(batches=_epoch_batches(fashion, n=777, seed=5))
    assert backend.trace_count == after_first
    eager = make_backend(NAME, model=ModelSpec(), train=TrainSpec(mode="eager"))
    eager.train_epoch(batches=_epoch_batches(fashion, n=300))
    assert eager.trace_count == 0, "eager mode must not build tf.functions"


@pytest.mark.parametrize("impl", ("concise", "scratch"))
def test_compiled_p1_gives_zeros(make_backend, fashion, impl):
    x, y = _batch(fashion, n=256)
    backend = make_backend(NAME, model=ModelSpec(impl=impl, dropouts=(1.0, 1.0)), train=TrainSpec(mode="compiled"))
    start = backend.get_params()
    loss, grads = backend.loss_and_grads(x=x, y=y)  # a tf.function in compiled mode
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    for key in ("dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias", "dense_2/kernel"):
        np.testing.assert_array_equal(grads[key], 0, err_msg=f"{key}: nothing passes p = 1")
    # Nothing reaches the output layer: the logits are its bias, in the step and in the whole-epoch function.
    only_bias = np.broadcast_to(start["dense_2/bias"], (len(x), 10))
    assert abs(backend.train_step(x=x, y=y) - _ce(only_bias, y)) < 1e-5
    metrics = backend.train_epoch(batches=_epoch_batches(fashion, n=600))
    assert np.isfinite(metrics.loss)
    after = backend.get_params()
    for key in ("dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias", "dense_2/kernel"):
        np.testing.assert_array_equal(after[key], start[key], err_msg=f"{key} moved through p = 1")
    assert not np.array_equal(after["dense_2/bias"], start["dense_2/bias"])


# --- BitDropout: Keras' Dropout with its mask from a few Philox bits under XLA ----------------------------------------
@pytest.mark.parametrize("q", [0.5, 0.25, 0.75, 3 / 16, 0.7])
def test_keep_masks_from_bits_have_the_law_of_a_uniform_at_least_the_rate(q):
    """Under XLA, bits or Keras' uniform test: each element kept with probability q, neighbours independent (in one
    word and across words: the pair (i, i + 1) kept with probability q**2), the same seed the same mask."""
    import tensorflow as tf

    from backends import tensorflow_backend as tb

    draw = tf.function(lambda seed: tb.keep_mask(seed, q, (1000, 301)), jit_compile=True)  # 301 001: no whole words
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
    import tensorflow as tf
    from keras.src.backend.tensorflow.random import _cast_seed
    from keras.src.random.seed_generator import draw_seed

    from backends import tensorflow_backend as tb

    x = tf.constant(np.random.default_rng(0).standard_normal((64, 48)) + 3.0, tf.float32)

    def run(layer, training=True):
        return tf.function(lambda: layer(x, training=training), jit_compile=True)().numpy()
    for rate in (0.3, 0.0, 1.0):
        assert np.array_equal(run(tb.BitDropout(rate, seed=5)), run(tb.layers.Dropout(rate, seed=5))), rate
    assert np.array_equal(run(tb.BitDropout(0.5, seed=5), training=False), x.numpy())
    bit, twin = tb.BitDropout(0.5, seed=5), tb.layers.Dropout(0.5, seed=5)
    seed = _cast_seed(draw_seed(twin.seed_generator))
    keep = tf.function(lambda: tb.keep_mask(seed, 0.5, x.shape), jit_compile=True)().numpy()
    got = run(bit)
    assert np.array_equal(got, np.where(keep, x.numpy() * 2.0, 0.0))
    assert 0.4 < keep.mean() < 0.6
    assert np.array_equal(bit.seed_generator.state.numpy(), twin.seed_generator.state.numpy())


def test_the_concise_model_takes_bit_dropout_only_under_xla(make_backend):
    """Compiled mode on more than one thread runs under XLA and takes BitDropout; eager mode keeps Keras' Dropout,
    so that eager and the plain graph stay on one stream."""
    from backends import tensorflow_backend as tb

    compiled = make_backend(NAME, model=ModelSpec(), train=TrainSpec(mode="compiled"), threads=2)
    eager = make_backend(NAME, model=ModelSpec(), train=TrainSpec(mode="eager"), threads=2)
    assert all(type(layer) is tb.BitDropout for layer in compiled.dropout_layers)
    assert all(type(layer) is tb.layers.Dropout for layer in eager.dropout_layers)
    assert "1 Philox bit(s) an element under XLA" in compiled.noise_probe(batch_size=32)[0]


# --- XLA's fusion emitters: chosen once a process, from its first model under XLA -------------------------------------
def test_only_a_model_whose_draws_are_all_bit_dropouts_counts_as_bit_draws_only():
    from backends import tensorflow_backend as tb

    assert tb.bit_draws_only(ModelSpec())  # D2L's 0.5 and 0.5
    assert tb.bit_draws_only(ModelSpec(dropouts=(0.25, 0.75)))
    assert tb.bit_draws_only(ModelSpec(impl="scratch", dropouts=(0.0, 0.0)))  # no draw at all
    assert not tb.bit_draws_only(ModelSpec(dropouts=(0.2, 0.5)))  # Keras' own uniform at 0.2
    assert not tb.bit_draws_only(ModelSpec(dropouts=(1.0, 0.5)))
    assert not tb.bit_draws_only(ModelSpec(impl="scratch"))
    assert not tb.bit_draws_only(ModelSpec(noise="gaussian"))


EMITTER_PROBE = """
import json, os, sys

import numpy as np
from backends import contract, tensorflow_backend as tb
from backends.contract.spec import ModelSpec, TrainSpec

dump, impls = sys.argv[1], sys.argv[2:]
# Added after the import: XLA reads XLA_FLAGS at its first compilation, which is why the backend chooses at __init__.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_dump_to=" + dump).strip()
backends = [tb.Backend(model=ModelSpec(impl=impl), train=TrainSpec(mode="compiled", batch_size=32), threads=2)
            for impl in impls]
backends[0].build(seed=0)
n = 64
backends[0].train_epoch(batches=contract.EpochBatches(x=np.zeros((n, 784), np.float32), y=np.zeros(n, np.int32),
                                                      order=np.arange(n), batch_size=32))
print(json.dumps({"flags": os.environ["XLA_FLAGS"], "dumped": len(os.listdir(dump))}))
"""


@pytest.mark.parametrize("impls, user_flags, expected", [
    (("concise", "scratch"), "", None),  # the first model's choice stands for the process
    (("scratch", "concise"), "", "false"),
    (("scratch",), "--xla_cpu_use_fusion_emitters=true", "true"),  # a user's own setting stands
])
def test_the_first_model_under_xla_chooses_the_fusion_emitters_before_xla_reads_its_flags(tmp_path, impls,
                                                                                           user_flags, expected):
    import json
    import subprocess
    import sys

    pytest.importorskip("tensorflow")
    from backends import registry

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(registry.PROJECT_ROOT), CUDA_VISIBLE_DEVICES="", **({"XLA_FLAGS": user_flags}
                                                                                 if user_flags else {}))
    run = subprocess.run([sys.executable, "-c", EMITTER_PROBE, str(tmp_path), *impls], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    probe = json.loads(run.stdout.strip().splitlines()[-1])
    settings = [flag.split("=", 1)[1] for flag in probe["flags"].split() if "xla_cpu_use_fusion_emitters" in flag]
    assert settings == ([] if expected is None else [expected]), probe["flags"]
    assert probe["dumped"] > 0, "XLA did not read XLA_FLAGS at its first compilation"
