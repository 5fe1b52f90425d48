"""JAX-specific checks that the shared parity ladder cannot see: a fresh dropout key per STEP inside an epoch (not one
per epoch) in both modes, eager and compiled consuming keys identically, seeded reproducibility of whole epochs, no
retrace after the first epoch, the one-line error for a missing GPU, and the CPU thread limit."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import backends
from backends import contract
from experiments import data
from backends.contract.spec import ModelSpec, TrainSpec
from tests.conftest import require_backend
from tests.helpers import assert_close

require_backend("jax", module_level=True)

RTOL = 1e-5
MODES = ("eager", "compiled")
IMPLS = ("concise", "scratch")


def same_examples_epoch(fashion, steps: int = 8) -> contract.EpochBatches:
    """An epoch whose batches all hold the same 256 examples, in the same order."""
    return contract.EpochBatches(x=fashion.train_x[:256], y=fashion.train_y[:256],
                             order=np.tile(np.arange(256), steps), batch_size=256)


def masks_differ_every_step(losses: np.ndarray) -> bool:
    """With lr = 1e-9 the weights do not move (the drift is far below float32's resolution of the loss), so the batch
    losses of identical batches differ only through the noise. A reused key repeats the loss to within an ulp or two
    (about 2.4e-7 at a loss of 2.3); fresh masks move it by about 1e-2, so every pair must be more than 4 ulps apart."""
    return len(losses) > 1 and float(np.min(np.diff(np.sort(losses)))) > 1e-6


# --- (a) a fresh key every step, within an epoch ---------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_each_step_in_an_epoch_draws_a_new_mask(make_backend, fashion, mode, impl):
    model, train = ModelSpec(impl=impl), TrainSpec(mode=mode, lr=1e-9)
    backend = make_backend("jax", model=model, train=train)
    backend.train_epoch(batches=same_examples_epoch(fashion))
    losses = backend.last_epoch_step_losses
    assert losses.shape == (8,)
    assert masks_differ_every_step(losses), f"{mode}/{impl}: steps of one epoch reuse a mask: {losses}"
    backend.train_epoch(batches=same_examples_epoch(fashion))
    assert not set(backend.last_epoch_step_losses.tolist()) & set(losses.tolist()), "epoch 2 replays epoch 1's keys"


@pytest.mark.parametrize("mode", MODES)
def test_the_step_check_catches_a_key_reused_for_the_whole_epoch(make_backend, fashion, mode):
    """Negative control: one key for every step of the epoch (the per-epoch mistake) makes the check above fail."""
    backend = make_backend("jax", model=ModelSpec(), train=TrainSpec(mode=mode, lr=1e-9))
    backend._step_key = lambda base_key, n: base_key  # patched before the first trace, so the traces use it
    backend.train_epoch(batches=same_examples_epoch(fashion))
    losses = backend.last_epoch_step_losses
    assert not masks_differ_every_step(losses), f"a reused key went unnoticed: {losses}"
    assert float(np.ptp(losses)) < 1e-6, losses


# --- (b) eager and compiled are the same run --------------------------------------------------------------------------
def two_epochs(make_backend, fashion, *, mode: str, model: ModelSpec, seed: int = 0, n: int = 2000):
    """Two epochs with native noise on a real subset: 7 full batches and a partial one of 208."""
    backend = make_backend("jax", model=model, train=TrainSpec(mode=mode, seed=seed), seed=seed)
    x, y = fashion.train_x[:n], fashion.train_y[:n]
    metrics, losses = [], []
    for epoch in (1, 2):
        order = data.epoch_order(n, seed=seed, epoch=epoch)
        metrics.append(backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=order, batch_size=256)))
        losses.append(backend.last_epoch_step_losses)
    return backend, metrics, np.concatenate(losses)


@pytest.mark.parametrize("impl,noise", [("concise", "dropout"), ("scratch", "dropout"), ("concise", "dropconnect")])
def test_eager_and_compiled_consume_keys_identically(make_backend, fashion, impl, noise):
    model = ModelSpec(impl=impl, noise=noise)
    eager, eager_metrics, eager_losses = two_epochs(make_backend, fashion, mode="eager", model=model)
    compiled, compiled_metrics, compiled_losses = two_epochs(make_backend, fashion, mode="compiled", model=model)
    assert eager_losses.shape == (16,)
    assert_close(compiled_losses, eager_losses, "per-step losses")
    for got, want in zip(compiled_metrics, eager_metrics):
        assert_close(got.loss, want.loss, "epoch loss")
        assert abs(got.acc - want.acc) <= 1 / 2000, "epoch accuracy"
    expected = eager.get_params()
    for key, value in compiled.get_params().items():
        assert_close(value, expected[key], f"after two epochs: {key}")


# --- (c) seeded reproducibility of whole epochs ----------------------------------------------------------------------
def test_same_seed_same_run_other_seed_other_run(make_backend, fashion):
    """Compiled mode (the eager mode is the same run: see the test above)."""
    model, mode = ModelSpec(), "compiled"
    first, first_metrics, first_losses = two_epochs(make_backend, fashion, mode=mode, model=model, seed=1)
    again, again_metrics, again_losses = two_epochs(make_backend, fashion, mode=mode, model=model, seed=1)
    np.testing.assert_array_equal(again_losses, first_losses, err_msg="same seed, different losses")
    assert again_metrics == first_metrics
    for key, value in first.get_params().items():
        np.testing.assert_array_equal(again.get_params()[key], value, err_msg=f"same seed: {key}")
    # A different seed with the SAME init and batch order isolates the noise: it must change the run.
    other = make_backend("jax", model=model, train=TrainSpec(mode=mode, seed=2), seed=2,
                         params=contract.shared_init(model, 1))
    x, y = fashion.train_x[:2000], fashion.train_y[:2000]
    other.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=data.epoch_order(2000, seed=1, epoch=1),
                                                batch_size=256))
    assert not np.array_equal(other.last_epoch_step_losses, first_losses[:8]), "the seed does not reach the noise"


# --- (d) no retrace after the first epoch ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_no_retrace_after_the_first_epoch(make_backend, fashion, mode):
    backend = make_backend("jax", model=ModelSpec(), train=TrainSpec(mode=mode))
    x, y = fashion.train_x[:1000], fashion.train_y[:1000]  # 3 full batches and one of 232
    stepper = "scan_epoch" if mode == "compiled" else "eager_step"
    for epoch in (1, 2, 3):
        order = data.epoch_order(1000, seed=0, epoch=epoch)
        backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=order, batch_size=256))
        backend.evaluate(x=fashion.test_x, y=fashion.test_y)
        if epoch == 1:
            after_first = dict(backend.trace_counts)
            assert after_first.get(stepper) == 1 and after_first.get("tail_step") == 1, after_first
    assert dict(backend.trace_counts) == after_first, f"retraced after epoch 1: {after_first} -> " \
                                                      f"{dict(backend.trace_counts)}"
    jitted = backend._jit_scan_epoch if mode == "compiled" else backend._jit_eager_step
    assert jitted._cache_size() == 1 and backend._jit_tail_step._cache_size() == 1


# --- (e) device gpu without a GPU -------------------------------------------------------------------------------------
def test_device_gpu_without_a_gpu_is_a_one_line_error():
    import jax

    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        has_gpu = False
    if has_gpu:
        pytest.skip("a JAX GPU is visible here")
    cls = backends.load_class("jax")
    with pytest.raises(ValueError) as caught:
        cls(model=ModelSpec(), train=TrainSpec(device="gpu"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("device gpu needs a JAX GPU device, none is visible here (jax ")
    assert message.endswith("platform cpu); use --device cpu")


# --- threads ----------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs at least two usable CPUs")
def test_dropbench_threads_bounds_the_xla_cpu_pool():
    """XLA sizes its CPU pool from the process's CPU affinity; DROPBENCH_THREADS=1 must narrow it before import."""
    probe = ("import os; import backends.jax_backend as jb; import jax; jax.devices(); "
             "print(len(os.sched_getaffinity(0)), os.environ.get('XLA_FLAGS', ''))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["DROPBENCH_THREADS"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=root,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    cpus, flags = result.stdout.strip().split(" ", 1)
    assert cpus == "1" and "--xla_cpu_multi_thread_eigen=false" in flags, result.stdout


# --- BitDropout: Flax's nn.Dropout with its mask from a few threefry bits ---------------------------------------------
@pytest.mark.parametrize("q", [0.5, 0.25, 0.75, 3 / 16, 0.7])
def test_keep_masks_from_bits_have_the_law_of_uniform_below_q(q):
    """Bits or Flax's ``random.bernoulli``: each element kept with probability q, neighbours independent (elements
    in one word and across words: the pair (i, i + 1) kept with probability q**2), the same key the same mask."""
    import jax

    from backends import jax_backend

    key = jax.random.PRNGKey(7)
    keep = np.asarray(jax_backend.keep_mask(key, q, (1000, 301)))  # 301 001 elements: no whole number of words
    assert keep.shape == (1000, 301) and keep.dtype == bool
    flat, n = keep.ravel().astype(np.float64), keep.size
    assert abs(flat.mean() - q) < 4 * np.sqrt(q * (1 - q) / n)
    pairs = (flat[:-1] * flat[1:]).mean()
    assert abs(pairs - q * q) < 4 * np.sqrt(q * q * (1 - q * q) / (n - 1))
    assert np.array_equal(keep, np.asarray(jax_backend.keep_mask(key, q, (1000, 301))))
    assert not np.array_equal(keep, np.asarray(jax_backend.keep_mask(jax.random.fold_in(key, 1), q, (1000, 301))))


def test_bit_dropout_is_flaxs_dropout_but_for_how_a_dyadic_mask_is_drawn():
    """At a rate whose keep probability is not j / 2**b, and at rates 0 and 1 and when deterministic, BitDropout is
    Flax's nn.Dropout to the bit; at 0.5 it keeps the elements of ``keep_mask`` with the 'dropout' stream's key,
    scaled by 2, and zeroes the others."""
    import flax.linen as nn
    import jax

    from backends import jax_backend

    x = jax.numpy.asarray(np.random.default_rng(0).standard_normal((64, 48)) + 3.0, jax.numpy.float32)
    key = jax.random.PRNGKey(3)

    def run(layer, rate, deterministic=False):
        return np.asarray(layer(rate, deterministic=deterministic).apply({}, x, rngs={"dropout": key}))
    for rate in (0.3, 0.0, 1.0):
        assert np.array_equal(run(jax_backend.BitDropout, rate), run(nn.Dropout, rate)), rate
    assert np.array_equal(run(jax_backend.BitDropout, 0.5, deterministic=True), np.asarray(x))
    layer_key = nn.Dropout(0.5).apply({}, x, rngs={"dropout": key}, method=lambda layer, _: layer.make_rng("dropout"))
    keep = np.asarray(jax_backend.keep_mask(layer_key, 0.5, x.shape))
    got = run(jax_backend.BitDropout, 0.5)
    assert np.array_equal(got, np.where(keep, np.asarray(x) / 0.5, 0.0))
    assert 0.4 < keep.mean() < 0.6


# --- the Dense product's kernel gradient on the CPU -------------------------------------------------------------------
@pytest.mark.parametrize("width", [10, 64, 65, 256])
def test_the_cpu_dense_product_has_flaxs_gradients(width):
    """cpu_dense_dot_general gives Flax Dense the same output and gradients as lax.dot_general, for outputs narrow
    enough to take the transposed kernel gradient (10, 64) and wider (65, 256)."""
    import jax
    import jax.numpy as jnp
    from backends import jax_backend

    rng = np.random.default_rng(width)
    x, kernel, upstream = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
                           for shape in ((32, 48), (48, width), (32, width)))

    def loss(dot_general, x, kernel):
        return jnp.sum(dot_general(x, kernel, (((1,), (0,)), ((), ()))) * upstream)
    plain = jax.value_and_grad(lambda *a: loss(jax.lax.dot_general, *a), argnums=(0, 1))(x, kernel)
    ours = jax.jit(jax.value_and_grad(lambda *a: loss(jax_backend.cpu_dense_dot_general, *a), argnums=(0, 1)))(
        x, kernel)
    assert_close(np.asarray(ours[0]), np.asarray(plain[0]), "the loss")
    for what, got, want in zip(("the input gradient", "the kernel gradient"), ours[1], plain[1]):
        assert_close(np.asarray(got), np.asarray(want), what)


def test_the_compiled_step_makes_the_necessary_products_only_and_the_narrow_kernel_gradient_a_plain_dot(make_backend,
                                                                                                       fashion):
    """In the CPU training step's HLO: eight products for three layers (the custom gradient leaves the images'
    gradient to XLA's dead-code removal, as autodiff does), and only the two wide kernel gradients contract a
    transposed left operand (the batch dimension of both); the 10-wide last layer's is a plain (out-by-in) dot."""
    import re

    import jax

    backend = make_backend("jax", model=ModelSpec(), train=TrainSpec(mode="compiled"))
    x_all, y_all = backend._on_device(fashion.train_x[:512]), backend._on_device(fashion.train_y[:512])
    totals = jax.device_put(np.zeros(2, np.float32), backend.device)
    idx_matrix = backend._put(np.arange(512).reshape(2, 256), np.int32)
    text = backend._jit_scan_epoch.lower(backend.params, backend.opt_state, totals, x_all, y_all, idx_matrix,
                                         backend.base_key, 0).compile().as_text()
    dots = re.findall(r"= f32\[([0-9,]+)\]\{[0-9,]+\} dot\([^)]*\), lhs_contracting_dims=\{(\d)\}", text)
    assert len(dots) == 8, dots
    assert sorted(shape for shape, lhs_contracting in dots if lhs_contracting == "0") == ["256,256", "784,256"], dots
