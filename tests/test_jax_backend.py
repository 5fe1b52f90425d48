"""JAX-specific checks that the shared parity ladder cannot see, for both tiers: a fresh dropout key per STEP inside an
epoch (not one per epoch) in both modes, eager and compiled consuming keys identically, seeded reproducibility of whole
epochs, no retrace after the first epoch, the one-line error for a missing GPU, and the CPU thread limit; that the
stock tier is stock (the textbook Flax model with ``nn.Dropout``, an Optax loop, XLA's own gradients, JAX's default
threefry layout); the tuned tier's paths (bit masks, the CPU Dense product); and what the probes report per tier."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import require_backend
from tests.helpers import assert_close

require_backend("jax", module_level=True)
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import backends  # noqa: E402
from backends import contract  # noqa: E402
from backends.contract.spec import ModelSpec, TrainSpec  # noqa: E402
from backends.jax import backend as stock  # noqa: E402
from backends.jax import model as jm  # noqa: E402
from backends.jax import probes, tuned  # noqa: E402
from experiments import data  # noqa: E402

MODES = ("eager", "compiled")
IMPLS = ("concise", "scratch")
TIERS = ("stock", "tuned")


def make(tier: str, model: ModelSpec | None = None, seed: int = 0, params=None, **train) -> stock.Backend:
    """A built backend of the tier (its class from the registry) on the CPU, with the shared init unless ``params``."""
    model = model or ModelSpec()
    backend = backends.load_class("jax", tier)(model=model, train=TrainSpec(tuning=tier, seed=seed, **train),
                                               threads=2)
    backend.build(seed=seed, params=contract.shared_init(model, seed) if params is None else params)
    return backend


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
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_each_step_in_an_epoch_draws_a_new_mask(fashion, mode, impl, tier):
    backend = make(tier, ModelSpec(impl=impl), mode=mode, lr=1e-9)
    backend.train_epoch(batches=same_examples_epoch(fashion))
    losses = backend.last_epoch_step_losses
    assert losses.shape == (8,)
    assert masks_differ_every_step(losses), f"{tier}/{mode}/{impl}: steps of one epoch reuse a mask: {losses}"
    backend.train_epoch(batches=same_examples_epoch(fashion))
    assert not set(backend.last_epoch_step_losses.tolist()) & set(losses.tolist()), "epoch 2 replays epoch 1's keys"


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("mode", MODES)
def test_the_step_check_catches_a_key_reused_for_the_whole_epoch(fashion, mode, tier):
    """Negative control: one key for every step of the epoch (the per-epoch mistake) makes the check above fail."""
    backend = make(tier, mode=mode, lr=1e-9)
    backend._step_key = lambda base_key, n: base_key  # patched before the first trace, so the traces use it
    backend.train_epoch(batches=same_examples_epoch(fashion))
    losses = backend.last_epoch_step_losses
    assert not masks_differ_every_step(losses), f"a reused key went unnoticed: {losses}"
    assert float(np.ptp(losses)) < 1e-6, losses


# --- (b) eager and compiled are the same run --------------------------------------------------------------------------
def two_epochs(fashion, *, tier: str, mode: str, model: ModelSpec, seed: int = 0, n: int = 2000):
    """Two epochs with native noise on a real subset: 7 full batches and a partial one of 208."""
    backend = make(tier, model, seed=seed, mode=mode)
    x, y = fashion.train_x[:n], fashion.train_y[:n]
    metrics, losses = [], []
    for epoch in (1, 2):
        order = data.epoch_order(n, seed=seed, epoch=epoch)
        metrics.append(backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=order, batch_size=256)))
        losses.append(backend.last_epoch_step_losses)
    return backend, metrics, np.concatenate(losses)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl,noise", [("concise", "dropout"), ("scratch", "dropout"), ("concise", "dropconnect")])
def test_eager_and_compiled_consume_keys_identically(fashion, impl, noise, tier):
    model = ModelSpec(impl=impl, noise=noise)
    eager, eager_metrics, eager_losses = two_epochs(fashion, tier=tier, mode="eager", model=model)
    compiled, compiled_metrics, compiled_losses = two_epochs(fashion, tier=tier, mode="compiled", model=model)
    assert eager_losses.shape == (16,)
    assert_close(compiled_losses, eager_losses, "per-step losses")
    for got, want in zip(compiled_metrics, eager_metrics):
        assert_close(got.loss, want.loss, "epoch loss")
        assert abs(got.acc - want.acc) <= 1 / 2000, "epoch accuracy"
    expected = eager.get_params()
    for key, value in compiled.get_params().items():
        assert_close(value, expected[key], f"after two epochs: {key}")


# --- (c) seeded reproducibility of whole epochs ----------------------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
def test_same_seed_same_run_other_seed_other_run(fashion, tier):
    """Compiled mode (the eager mode is the same run: see the test above)."""
    model, mode = ModelSpec(), "compiled"
    first, first_metrics, first_losses = two_epochs(fashion, tier=tier, mode=mode, model=model, seed=1)
    again, again_metrics, again_losses = two_epochs(fashion, tier=tier, mode=mode, model=model, seed=1)
    np.testing.assert_array_equal(again_losses, first_losses, err_msg="same seed, different losses")
    assert again_metrics == first_metrics
    for key, value in first.get_params().items():
        np.testing.assert_array_equal(again.get_params()[key], value, err_msg=f"same seed: {key}")
    # A different seed with the SAME init and batch order isolates the noise: it must change the run.
    other = make(tier, model, seed=2, params=contract.shared_init(model, 1), mode=mode)
    x, y = fashion.train_x[:2000], fashion.train_y[:2000]
    other.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=data.epoch_order(2000, seed=1, epoch=1),
                                                    batch_size=256))
    assert not np.array_equal(other.last_epoch_step_losses, first_losses[:8]), "the seed does not reach the noise"


# --- (d) no retrace after the first epoch ----------------------------------------------------------------------------
STEPPERS = {("stock", "eager"): {"step": 2}, ("stock", "compiled"): {"scan_epoch": 1, "step": 1},
            ("tuned", "eager"): {"eager_step": 1, "tail_step": 1}, ("tuned", "compiled"): {"scan_epoch": 1,
                                                                                           "tail_step": 1}}


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("mode", MODES)
def test_no_retrace_after_the_first_epoch(fashion, mode, tier):
    """Stock eager traces its one step twice (the full batches' shape and the partial one's), stock compiled its
    scan and the step once each, the tuned tier its gathered stepper and its tail step once each; then never again."""
    backend = make(tier, mode=mode)
    x, y = fashion.train_x[:1000], fashion.train_y[:1000]  # 3 full batches and one of 232
    for epoch in (1, 2, 3):
        order = data.epoch_order(1000, seed=0, epoch=epoch)
        backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=order, batch_size=256))
        backend.evaluate(x=fashion.test_x, y=fashion.test_y)
        if epoch == 1:
            after_first = dict(backend.trace_counts)
            assert {k: after_first.get(k) for k in STEPPERS[tier, mode]} == STEPPERS[tier, mode], after_first
    assert dict(backend.trace_counts) == after_first, f"retraced after epoch 1: {after_first} -> " \
                                                      f"{dict(backend.trace_counts)}"
    assert {name: getattr(backend, f"_jit_{name}")._cache_size() for name in STEPPERS[tier, mode]} == STEPPERS[tier,
                                                                                                           mode]


# --- (e) device gpu without a GPU -------------------------------------------------------------------------------------
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a JAX GPU is visible here")
@pytest.mark.parametrize("tier", TIERS)
def test_device_gpu_without_a_gpu_is_a_one_line_error(tier):
    with pytest.raises(ValueError) as caught:
        backends.load_class("jax", tier)(model=ModelSpec(), train=TrainSpec(device="gpu", tuning=tier))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("device gpu needs a JAX GPU device, none is visible here (jax ")
    assert message.endswith("platform cpu); use --device cpu")


# --- threads ----------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs at least two usable CPUs")
@pytest.mark.parametrize("tier", TIERS)
def test_dropbench_threads_bounds_the_xla_cpu_pool(tier):
    """XLA sizes its CPU pool from the process's CPU affinity; DROPBENCH_THREADS=1 must narrow it before import, in
    both tiers (the tuned module imports the stock one, which imports ``model`` first)."""
    module = {"stock": "backends.jax.backend", "tuned": "backends.jax.tuned"}[tier]
    probe = (f"import os; import {module}; import jax; jax.devices(); "
             "print(len(os.sched_getaffinity(0)), os.environ.get('XLA_FLAGS', ''))")
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "DROPBENCH_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                            cwd=backends.PROJECT_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    cpus, flags = result.stdout.strip().split(" ", 1)
    assert cpus == "1" and "--xla_cpu_multi_thread_eigen=false" in flags, result.stdout


# --- the stock tier is stock ------------------------------------------------------------------------------------------
class TextbookMLP(nn.Module):
    """The section's concise JAX model, written here again: Dense, relu, Dropout, Dense, relu, Dropout, Dense."""
    training: bool
    @nn.compact
    def __call__(self, X):
        x = nn.relu(nn.Dense(256, name="dense_0")(X.reshape((X.shape[0], -1))))
        x = nn.Dropout(0.5, deterministic=not self.training)(x)
        x = nn.relu(nn.Dense(256, name="dense_1")(x))
        x = nn.Dropout(0.5, deterministic=not self.training)(x)
        return nn.Dense(10, name="dense_2")(x)


def textbook_params(params):
    return {f"dense_{i}": {leaf: jnp.asarray(params[f"dense_{i}/{leaf}"]) for leaf in ("kernel", "bias")}
            for i in range(3)}


def test_stock_concise_model_is_the_textbook_flax_model(fashion):
    """The stock concise model is Flax's nn.Dense and nn.Dropout: its first native draw (key ``fold_in(PRNGKey(
    noise_seed(seed)), 0)``) gives the textbook model's logits with that key, and its eval logits the textbook's. The
    tuned tier's bit masks (a negative control) give other logits from the same key."""
    x, backend = fashion.train_x[:256], make("stock")
    assert type(backend.net) is jm.DropoutMLP and backend.net.dropout_module is nn.Dropout
    assert backend.net.dot_general is None
    params = textbook_params(contract.shared_init(ModelSpec(), 0))
    key = jax.random.fold_in(jax.random.PRNGKey(contract.noise_seed(0)), 0)
    want = np.asarray(TextbookMLP(training=True).apply({"params": params}, x, rngs={"dropout": key}))
    assert_close(backend.forward(x=x, train=True), want, "training logits, first draw")
    assert_close(backend.forward(x=x, train=False), np.asarray(TextbookMLP(training=False).apply({"params": params},
                                                                                               x)), "eval logits")
    other = make("tuned").forward(x=x, train=True)  # on the CPU, as every backend here
    assert float(np.max(np.abs(other - want))) > 0.1 * float(np.max(np.abs(want))), "tuned masks are stock's"


@pytest.mark.parametrize("mode", MODES)
def test_stock_training_is_a_textbook_optax_loop(fashion, mode):
    """Three steps of the stock tier (weight decay on) are a plain jitted Flax + Optax step called per batch: optax.sgd
    after optax.masked(optax.add_decayed_weights) on the kernels, the batch's key fold_in(base, n)."""
    lr, wd = 0.1, 1e-2
    backend = make("stock", mode=mode, lr=lr, weight_decay=wd)
    x, y = fashion.train_x[:768], fashion.train_y[:768]
    backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=np.arange(768), batch_size=256))

    mask = {f"dense_{i}": {"kernel": True, "bias": False} for i in range(3)}
    tx = optax.chain(optax.masked(optax.add_decayed_weights(wd), mask), optax.sgd(lr))
    net = TextbookMLP(training=True)

    @jax.jit
    def step(params, opt_state, xb, yb, key):
        def loss(params):
            logits = net.apply({"params": params}, xb, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = textbook_params(contract.shared_init(ModelSpec(), 0))
    opt_state, base = tx.init(params), jax.random.PRNGKey(contract.noise_seed(0))
    for n in range(3):
        params, opt_state = step(params, opt_state, x[256 * n:256 * (n + 1)], y[256 * n:256 * (n + 1)],
                                 jax.random.fold_in(base, n))
    got = backend.get_params()
    for name, value in got.items():
        assert_close(value, np.asarray(params[name.split("/")[0]][name.split("/")[1]]), f"{name} after three steps")


def primitives(jaxpr) -> list[tuple[str, tuple]]:
    """(name, params) of every primitive the program runs, each call of a sub-program counted again."""
    found = []
    for eqn in jaxpr.eqns:
        found.append((eqn.primitive.name, eqn.params))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    found += primitives(getattr(sub, "jaxpr", sub))
    return found


def step_parts(backend, fashion) -> tuple[list[tuple[int, ...]], set[str]]:
    """(the shape of every ``random_bits`` of the training step, its custom_vjp and optimisation-barrier primitives)."""
    x, y = backend._put(fashion.train_x[:256], np.float32), backend._put(fashion.train_y[:256], np.int32)
    found = primitives(jax.make_jaxpr(backend._step_fn)(backend.params, backend.opt_state, x, y, backend.base_key, 0,
                                                        None).jaxpr)
    return ([tuple(params["shape"]) for name, params in found if name == "random_bits"],
            {name for name, _ in found if "custom_vjp" in name or name == "optimization_barrier"})


@pytest.mark.parametrize("impl", IMPLS)
def test_stock_step_is_xlas_autodiff_with_32_random_bits_an_element(fashion, impl):
    """The stock step is JAX's own autodiff (no custom_vjp, no optimisation barrier), and its dropout draws one
    32-bit word for each (256, 256) activation element (Flax's uniform, or the section's); the tuned tier on the CPU
    (a control) has the barriers of its Dense kernel gradient, and its concise model draws 1/32 of the words."""
    assert step_parts(make("stock", ModelSpec(impl=impl)), fashion) == ([(256, 256)] * 2, set())
    draws, custom = step_parts(make("tuned", ModelSpec(impl=impl)), fashion)  # on the CPU, as every backend here
    assert draws == [(2048,) if impl == "concise" else (256, 256)] * 2 and "optimization_barrier" in custom


def test_the_tuned_tier_keeps_its_threefry_layout_to_itself(fashion):
    """The tuned tier draws in the older threefry layout, scoped to its own calls: after a tuned backend has run, JAX's
    configuration is its default again and a stock backend draws what it drew before."""
    x = fashion.train_x[:64]
    before = make("stock").forward(x=x, train=True)
    make("tuned").forward(x=x, train=True)
    if "JAX_THREEFRY_PARTITIONABLE" not in os.environ:
        assert jax.config.jax_threefry_partitionable, "the tuned tier left its threefry layout switched on"
    np.testing.assert_array_equal(make("stock").forward(x=x, train=True), before)


# --- BitDropout: Flax's nn.Dropout with its mask from a few threefry bits ---------------------------------------------
@pytest.mark.parametrize("q", [0.5, 0.25, 0.75, 3 / 16, 0.7])
def test_keep_masks_from_bits_have_the_law_of_uniform_below_q(q):
    """Bits or Flax's ``random.bernoulli``: each element kept with probability q, neighbours independent (elements
    in one word and across words: the pair (i, i + 1) kept with probability q**2), the same key the same mask."""
    key = jax.random.PRNGKey(7)
    keep = np.asarray(tuned.keep_mask(key, q, (1000, 301)))  # 301 001 elements: no whole number of words
    assert keep.shape == (1000, 301) and keep.dtype == bool
    flat, n = keep.ravel().astype(np.float64), keep.size
    assert abs(flat.mean() - q) < 4 * np.sqrt(q * (1 - q) / n)
    pairs = (flat[:-1] * flat[1:]).mean()
    assert abs(pairs - q * q) < 4 * np.sqrt(q * q * (1 - q * q) / (n - 1))
    assert np.array_equal(keep, np.asarray(tuned.keep_mask(key, q, (1000, 301))))
    assert not np.array_equal(keep, np.asarray(tuned.keep_mask(jax.random.fold_in(key, 1), q, (1000, 301))))


def test_bit_dropout_is_flaxs_dropout_but_for_how_a_dyadic_mask_is_drawn():
    """At a rate whose keep probability is not j / 2**b, and at rates 0 and 1 and when deterministic, BitDropout is
    Flax's nn.Dropout to the bit; at 0.5 it keeps the elements of ``keep_mask`` with the 'dropout' stream's key,
    scaled by 2, and zeroes the others."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 48)) + 3.0, jnp.float32)
    key = jax.random.PRNGKey(3)

    def run(layer, rate, deterministic=False):
        return np.asarray(layer(rate, deterministic=deterministic).apply({}, x, rngs={"dropout": key}))
    for rate in (0.3, 0.0, 1.0):
        assert np.array_equal(run(tuned.BitDropout, rate), run(nn.Dropout, rate)), rate
    assert np.array_equal(run(tuned.BitDropout, 0.5, deterministic=True), np.asarray(x))
    layer_key = nn.Dropout(0.5).apply({}, x, rngs={"dropout": key}, method=lambda layer, _: layer.make_rng("dropout"))
    keep = np.asarray(tuned.keep_mask(layer_key, 0.5, x.shape))
    got = run(tuned.BitDropout, 0.5)
    assert np.array_equal(got, np.where(keep, np.asarray(x) / 0.5, 0.0))
    assert 0.4 < keep.mean() < 0.6


# --- the tuned Dense product's kernel gradient on the CPU -------------------------------------------------------------
@pytest.mark.parametrize("width", [10, 64, 65, 256])
def test_the_cpu_dense_product_has_flaxs_gradients(width):
    """cpu_dense_dot_general gives Flax Dense the same output and gradients as lax.dot_general, for outputs narrow
    enough to take the transposed kernel gradient (10, 64) and wider (65, 256)."""
    rng = np.random.default_rng(width)
    x, kernel, upstream = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
                           for shape in ((32, 48), (48, width), (32, width)))

    def loss(dot_general, x, kernel):
        return jnp.sum(dot_general(x, kernel, (((1,), (0,)), ((), ()))) * upstream)
    plain = jax.value_and_grad(lambda *a: loss(jax.lax.dot_general, *a), argnums=(0, 1))(x, kernel)
    ours = jax.jit(jax.value_and_grad(lambda *a: loss(tuned.cpu_dense_dot_general, *a), argnums=(0, 1)))(x, kernel)
    assert_close(np.asarray(ours[0]), np.asarray(plain[0]), "the loss")
    for what, got, want in zip(("the input gradient", "the kernel gradient"), ours[1], plain[1]):
        assert_close(np.asarray(got), np.asarray(want), what)


def compiled_step_dots(backend, fashion) -> list[tuple[str, str]]:
    """(result shape, lhs contracting dim) of every dot in the compiled HLO of the backend's compiled epoch."""
    x, y = fashion.train_x[:512], fashion.train_y[:512]
    if isinstance(backend, tuned.Backend):  # the gathered epoch: accumulators, the split, the batches' indices
        args = (backend._put(np.zeros(2), np.float32), backend._on_device(x), backend._on_device(y),
                backend._put(np.arange(512).reshape(2, 256), np.int32))
    else:
        args = (backend._put(x.reshape(2, 256, -1), np.float32), backend._put(y.reshape(2, 256), np.int32))
    text = backend._jit_scan_epoch.lower(backend.params, backend.opt_state, *args, backend.base_key, 0).compile()
    return re.findall(r"= f32\[([0-9,]+)\]\{[0-9,]+\} dot\([^)]*\), lhs_contracting_dims=\{(\d)\}", text.as_text())


def test_the_compiled_step_makes_the_necessary_products_only_and_the_narrow_kernel_gradient_a_plain_dot(fashion):
    """In the tuned CPU training step's HLO: eight products for three layers (the custom gradient leaves the images'
    gradient to XLA's dead-code removal, as autodiff does), and only the two wide kernel gradients contract a
    transposed left operand (the batch dimension of both); the 10-wide last layer's is a plain (out-by-in) dot. The
    stock step (a control) has eight products too, XLA's autodiff, all three kernel gradients transposed-operand
    dots."""
    for tier, transposed in (("tuned", ["256,256", "784,256"]), ("stock", ["256,10", "256,256", "784,256"])):
        dots = compiled_step_dots(make(tier, mode="compiled"), fashion)
        assert len(dots) == 8 and sorted(shape for shape, lhs in dots if lhs == "0") == transposed, (tier, dots)


# --- probes, per tier -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
def test_the_probes_run_what_the_tier_runs(tier):
    """The step's products through JAX are NumPy's products (a kernel gradient through the tuned tier's own path on
    the CPU included); the noise probe names the tier's dropout and leaves the backend's noise stream where it was."""
    backend = make(tier, ModelSpec(hiddens=(24, 16)), batch_size=8)
    assert probes.gemm_library(backend, m=8, k=784, n=24).startswith("XLA ")
    products, rng = [{"m": 24, "k": 8, "n": 16, "ta": True, "tb": False},
                     {"m": 8, "k": 16, "n": 24, "ta": False, "tb": True}], np.random.default_rng(0)
    operands = [[rng.standard_normal(s) for s in contract.held_operand_shapes(p)] for p in products]
    results = probes.gemm_step_probe(backend, products=products, rounds=2)()
    for (a, b), p, got in zip(operands, products, results):
        want = (a.T if p["ta"] else a) @ (b.T if p["tb"] else b)
        assert_close(np.asarray(got), want, f"product {p}")
    how, draw = probes.noise_probe(backend, batch_size=64)
    bits = tier == "tuned" and backend.device.platform == "cpu"
    assert how == ("nn.Dropout, 1 threefry bit(s) an element, jitted alone" if bits
                   else "nn.Dropout (threefry), jitted alone"), how
    draws, out = backend.draws, draw()
    assert [o.shape for o in out] == [(64, 24), (64, 16)] and backend.draws == draws
    assert all(0.35 < float(np.mean(np.asarray(o) == 0)) < 0.65 for o in out)
