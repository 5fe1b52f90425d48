"""The oracle itself: hand-written gradients against finite differences, in float64, for every noise kind."""
import numpy as np
import pytest

from backends import contract
from backends.numpy_ref import Backend, Oracle
from backends.contract.spec import NOISE_KINDS, ModelSpec, TrainSpec


def _loss(oracle, x, y, masks):
    return oracle.loss_and_grads(x=x, y=y, masks=masks)[0]


@pytest.mark.parametrize("noise", list(NOISE_KINDS))
def test_gradients_match_central_differences(noise):
    model = ModelSpec(num_inputs=12, hiddens=(9, 7), num_outputs=5, dropouts=(0.3, 0.6), noise=noise)
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 12)), rng.integers(0, 5, 6)
    oracle = Oracle(model=model, train=TrainSpec())
    oracle.build(seed=0)
    masks = contract.draw_masks(model, 6, rng)
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
    model = ModelSpec(num_inputs=3, hiddens=(4,), num_outputs=3, dropouts=(0.0,))
    oracle = Oracle(model=model, train=TrainSpec())
    oracle.build(seed=0)
    oracle.params["dense_1/bias"][:] = [1e4, 0.0, -1e4]
    loss, grads = oracle.loss_and_grads(x=np.ones((2, 3)), y=np.array([0, 2]))
    assert np.isfinite(loss) and abs(loss - 1e4) < 1.0
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_weight_decay_adds_wd_times_kernel_and_spares_biases():
    model = ModelSpec(num_inputs=4, hiddens=(3,), num_outputs=2, dropouts=(0.0,))
    x, y = np.ones((2, 4), dtype=np.float32), np.array([0, 1])
    plain, decayed = (Oracle(model=model, train=TrainSpec(lr=0.5, weight_decay=wd)) for wd in (0.0, 0.1))
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
    model, train = ModelSpec(), TrainSpec()
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 784), dtype=np.float32), rng.integers(0, 10, 64)
    single, double = Backend(model=model, train=train), Oracle(model=model, train=train)
    single.build(seed=0)
    double.build(seed=0)
    assert all(v.dtype == np.float32 for v in single.params.values())
    assert all(v.dtype == np.float64 for v in double.params.values())
    masks = contract.draw_masks(model, 64, rng)
    assert abs(single.train_step(x=x, y=y, masks=masks) - double.train_step(x=x, y=y, masks=masks)) < 1e-5


def test_shared_init_is_torch_like_and_seeded():
    model = ModelSpec()
    params, again, other = contract.shared_init(model, 0), contract.shared_init(model, 0), contract.shared_init(model, 1)
    for name, value in params.items():
        fan_in = model.param_shapes()[name.split("/")[0] + "/kernel"][0]
        bound = 1 / np.sqrt(fan_in)
        assert value.dtype == np.float32 and np.abs(value).max() <= bound
        assert abs(value.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)  # U(-b, b) has std b/sqrt(3)
        np.testing.assert_array_equal(value, again[name])
        assert not np.array_equal(value, other[name])
