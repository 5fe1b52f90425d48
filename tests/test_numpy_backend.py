"""The NumPy backend's stock tier and its float64 copy, the oracle: hand-written gradients against finite differences
for every noise kind, the section's dropout_layer and its own masks, SGD with weight decay, and its probes."""
import numpy as np
import pytest

from backends import contract, registry
from backends.contract.spec import NOISE_KINDS, ModelSpec, TrainSpec
from backends.numpy import model, probes
from backends.numpy.backend import Backend, Oracle


def _loss(oracle, x, y, masks):
    return oracle.loss_and_grads(x=x, y=y, masks=masks)[0]


@pytest.mark.parametrize("noise", list(NOISE_KINDS))
def test_gradients_match_central_differences(noise):
    model_spec = ModelSpec(num_inputs=12, hiddens=(9, 7), num_outputs=5, dropouts=(0.3, 0.6), noise=noise)
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 12)), rng.integers(0, 5, 6)
    oracle = Oracle(model=model_spec, train=TrainSpec())
    oracle.build(seed=0)
    masks = contract.draw_masks(model_spec, 6, rng)
    _, grads = oracle.loss_and_grads(x=x, y=y, masks=masks)
    step = 1e-6
    for name, value in oracle.params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + step
            plus = _loss(oracle, x, y, masks)
            value[index] = saved - step
            minus = _loss(oracle, x, y, masks)
            value[index] = saved
            numeric[index] = (plus - minus) / (2 * step)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=f"{noise}: {name}")


def test_loss_is_stable_for_huge_logits():
    model_spec = ModelSpec(num_inputs=3, hiddens=(4,), num_outputs=3, dropouts=(0.0,))
    oracle = Oracle(model=model_spec, train=TrainSpec())
    oracle.build(seed=0)
    oracle.params["dense_1/bias"][:] = [1e4, 0.0, -1e4]
    loss, grads = oracle.loss_and_grads(x=np.ones((2, 3)), y=np.array([0, 2]))
    assert np.isfinite(loss) and abs(loss - 1e4) < 1.0
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_weight_decay_adds_wd_times_kernel_and_spares_biases():
    model_spec = ModelSpec(num_inputs=4, hiddens=(3,), num_outputs=2, dropouts=(0.0,))
    x, y = np.ones((2, 4), dtype=np.float32), np.array([0, 1])
    plain, decayed = (Oracle(model=model_spec, train=TrainSpec(lr=0.5, weight_decay=wd)) for wd in (0.0, 0.1))
    for oracle in (plain, decayed):
        oracle.build(seed=1)
    start = plain.get_params()
    plain.train_step(x=x, y=y)
    decayed.train_step(x=x, y=y)
    for name in start:
        difference = decayed.get_params()[name] - plain.get_params()[name]
        expected = -0.5 * 0.1 * start[name] if name.endswith("kernel") else np.zeros_like(start[name])
        np.testing.assert_allclose(difference, expected, atol=1e-12, err_msg=name)


def test_float32_backend_tracks_the_oracle_and_trains_in_float32():
    model_spec, train = ModelSpec(), TrainSpec()
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 784), dtype=np.float32), rng.integers(0, 10, 64)
    single, double = Backend(model=model_spec, train=train), Oracle(model=model_spec, train=train)
    single.build(seed=0)
    double.build(seed=0)
    assert all(v.dtype == np.float32 for v in single.params.values())
    assert all(v.dtype == np.float64 for v in double.params.values())
    masks = contract.draw_masks(model_spec, 64, rng)
    assert abs(single.train_step(x=x, y=y, masks=masks) - double.train_step(x=x, y=y, masks=masks)) < 1e-5


def test_the_oracle_is_the_stock_tier_in_float64():
    assert issubclass(Oracle, Backend) and Oracle.name == "numpy-oracle" and Oracle.dtype == np.float64
    assert registry.load_class("numpy", "stock") is Backend
    assert not issubclass(Oracle, registry.load_class("numpy", "tuned"))


def test_shared_init_is_torch_like_and_seeded():
    model_spec = ModelSpec()
    params, again = contract.shared_init(model_spec, 0), contract.shared_init(model_spec, 0)
    other = contract.shared_init(model_spec, 1)
    for name, value in params.items():
        fan_in = model_spec.param_shapes()[name.split("/")[0] + "/kernel"][0]
        bound = 1 / np.sqrt(fan_in)
        assert value.dtype == np.float32 and np.abs(value).max() <= bound
        assert abs(value.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)  # U(-b, b) has std b/sqrt(3)
        np.testing.assert_array_equal(value, again[name])
        assert not np.array_equal(value, other[name])


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_layer_is_the_sections(p):
    """Survivors scaled by 1/(1-p), the dropped ones 0; p = 0 the input itself, p = 1 zeros, never NaN."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 40)).astype(np.float32)
    keep = rng.random(X.shape, dtype=np.float32) > p
    out = model.dropout_layer(X, p, keep)
    assert out.dtype == np.float32 and out.shape == X.shape
    if p == 0:
        assert out is X
    elif p == 1:
        assert np.array_equal(out, np.zeros_like(X))
    else:
        np.testing.assert_allclose(out, np.where(keep, X / np.float32(1 - p), 0), rtol=1e-6, atol=0)
        assert 0 < keep.mean() < 1


@pytest.mark.parametrize("noise", ["dropout", "dropconnect", "gaussian"])
def test_the_stock_tiers_own_noise_is_the_sections_uniform_draw(noise):
    """With no masks, a step draws ``uniform > p`` (N(0, 1) for Gaussian noise) from the backend's noise stream,
    seeded by ``noise_seed``: the same numbers as ``draw_masks`` injected from a generator at that seed, call after
    call; consecutive calls draw anew."""
    model_spec = ModelSpec(num_inputs=12, hiddens=(9, 7), num_outputs=5, dropouts=(0.3, 0.5), noise=noise)
    rng = np.random.default_rng(4)
    x, y = rng.random((16, 12), dtype=np.float32), rng.integers(0, 5, 16)
    native, injected = (Backend(model=model_spec, train=TrainSpec()) for _ in range(2))
    native.build(seed=7)
    injected.build(seed=7)
    stream = np.random.default_rng(contract.noise_seed(7))
    losses = []
    for _ in range(3):
        losses.append(native.train_step(x=x, y=y))
        assert losses[-1] == injected.train_step(x=x, y=y, masks=contract.draw_masks(model_spec, 16, stream))
    assert len(set(losses)) == 3
    for name, value in native.get_params().items():
        np.testing.assert_array_equal(value, injected.get_params()[name], err_msg=name)
    assert native.rng.bit_generator.state == stream.bit_generator.state


def test_an_epoch_is_its_steps_and_evaluate_is_exact_over_chunks():
    """``train_epoch`` is ``train_step`` over the shared batches in order (the last one partial); ``evaluate`` over
    more than one chunk is the mean over every example."""
    model_spec = ModelSpec(num_inputs=12, hiddens=(9, 7), num_outputs=5)
    rng = np.random.default_rng(5)
    x, y = rng.random((50, 12), dtype=np.float32), rng.integers(0, 5, 50)
    order = rng.permutation(50)
    epoch, steps = (Backend(model=model_spec, train=TrainSpec()) for _ in range(2))
    epoch.build(seed=0)
    steps.build(seed=0)
    metrics = epoch.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=order, batch_size=32))
    losses = [steps.train_step(x=x[order[:32]], y=y[order[:32]]), steps.train_step(x=x[order[32:]], y=y[order[32:]])]
    assert metrics.loss == pytest.approx((losses[0] * 32 + losses[1] * 18) / 50, rel=1e-6)
    big = np.concatenate([x] * 500)[: contract.EVAL_CHUNK + 7]
    labels = np.concatenate([y] * 500)[: contract.EVAL_CHUNK + 7]
    logits = epoch.forward(x=big, train=False).astype(np.float64)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    result = epoch.evaluate(x=big, y=labels)
    assert result.loss == pytest.approx(-log_probs[np.arange(len(big)), labels].mean(), rel=1e-6)
    assert result.acc == np.mean(logits.argmax(1) == labels)


def test_activations_before_and_after_the_noise():
    model_spec = ModelSpec(num_inputs=12, hiddens=(9, 7), num_outputs=5, dropouts=(0.5, 0.5))
    backend = Backend(model=model_spec, train=TrainSpec())
    backend.build(seed=0)
    x = np.random.default_rng(6).random((20, 12), dtype=np.float32)
    masks = contract.draw_masks(model_spec, 20, np.random.default_rng(1))
    out = backend.activations(x=x, train=True, masks=masks)
    for i in range(2):
        pre, post = out[f"hidden_{i}/pre_noise"], out[f"hidden_{i}/post_noise"]
        assert pre.min() >= 0 and pre.dtype == np.float32
        np.testing.assert_array_equal(post, pre * masks[i] * np.float32(2))
    evaluated = backend.activations(x=x, train=False)
    assert all(np.array_equal(evaluated[f"hidden_{i}/pre_noise"], evaluated[f"hidden_{i}/post_noise"]) for i in (0, 1))
    pre = backend.pre_activations(x=x, masks=masks)
    assert [np.array_equal(np.maximum(z, 0), out[f"hidden_{i}/pre_noise"]) for i, z in enumerate(pre)] == [True] * 2


def test_stock_probes_name_matmul_give_each_products_shape_and_leave_the_stream_alone():
    backend = Backend(model=ModelSpec(hiddens=(24, 16)), train=TrainSpec(batch_size=8))
    backend.build(seed=0)
    assert "numpy.matmul" in probes.gemm_library(backend, m=8, k=784, n=24)
    products = [{"m": 8, "k": 784, "n": 24, "ta": False, "tb": False}, {"m": 784, "k": 8, "n": 24, "ta": True,
                                                                           "tb": False},
                {"m": 8, "k": 24, "n": 784, "ta": False, "tb": True}]
    once = [r.copy() for r in probes.gemm_step_probe(backend, products=products, rounds=1)()]
    thrice = probes.gemm_step_probe(backend, products=products, rounds=3)()
    assert [r.shape for r in thrice] == [(8, 24), (784, 24), (8, 784)]
    assert all(np.array_equal(a, b) for a, b in zip(once, thrice))
    state = backend.rng.bit_generator.state
    label, draw = probes.noise_probe(backend, batch_size=8)
    draw()
    assert "uniforms > p" in label and backend.rng.bit_generator.state == state
