"""The parity ladder: every backend, both implementations, against the NumPy float64 oracle.

Tolerance: float32 frameworks against the float64 oracle, measured as max |actual - expected| <= RTOL * max |expected|
(scale-relative, so that small entries of a large tensor do not need an absolute fudge). The NumPy float32 backend
reaches about 1e-7 on every rung (20 steps included); RTOL = 1e-5 leaves room for other summation orders (oneDNN,
XLA, Eigen) while a transposed kernel, a mask scaled by p instead of 1/(1-p), or noise left on in evaluation miss by
orders of magnitude.

Rungs: 1 static layout; 2 forward, noise off; 3 loss and gradients with injected noise; 4 twenty SGD steps on real
batches with injected noise, every step; 5 native noise statistics; 6 concise and scratch agree (rungs 2-4 hold for
both against the same oracle, and directly against each other); plus a whole epoch (train_epoch) in every mode.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import backends
from backends import contract
from backends.numpy_ref import Oracle
from backends.contract.spec import NOISE_KINDS, ModelSpec, TrainSpec
from backends.remote.client import RemoteError
from tests.conftest import backends_under_test
from tests.helpers import assert_close

RTOL = 1e-5
BACKENDS = backends_under_test()
IMPLS = ("concise", "scratch")
NOISES = tuple(NOISE_KINDS)


def oracle_for(model: ModelSpec, train: TrainSpec, seed: int = 0) -> Oracle:
    """The float64 reference for the same spec; it has one mode, whatever mode the backend under test runs."""
    oracle = Oracle(model=model, train=dataclasses.replace(train, mode="eager"))
    oracle.build(seed=seed, params=contract.shared_init(model, seed))
    return oracle


def modes_of(name: str) -> tuple[str, ...]:
    return backends.resolve(name).modes


def backend_mode_pairs() -> list:
    return [pytest.param(b, m, id=f"{b}-{m}") for b in BACKENDS for m in modes_of(b)]


# --- rung 1: static -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", BACKENDS)
def test_rung1_canonical_layout(make_backend, name, impl):
    model = ModelSpec(impl=impl)
    backend = make_backend(name, model=model)
    params = backend.get_params()
    assert {k: v.shape for k, v in params.items()} == model.param_shapes()
    assert sum(v.size for v in params.values()) == 269_322 == model.num_params()
    assert all(v.dtype == np.float32 for v in params.values())
    for key, value in contract.shared_init(model, 0).items():  # loads exactly what it was given, no transpose lost
        np.testing.assert_array_equal(params[key], value, err_msg=key)


@pytest.mark.parametrize("name", BACKENDS)
def test_rung1_set_params_round_trip_and_shape_check(make_backend, name):
    model = ModelSpec()
    backend = make_backend(name, model=model)
    other = contract.shared_init(model, 7)
    backend.set_params(params=other)
    for key, value in backend.get_params().items():
        np.testing.assert_array_equal(value, other[key], err_msg=key)
    wrong = dict(other, **{"dense_0/kernel": other["dense_0/kernel"].T.copy()})
    with pytest.raises((ValueError, RemoteError), match="dense_0/kernel has shape"):
        backend.set_params(params=wrong)


@pytest.mark.parametrize("name", BACKENDS)
def test_rung1_framework_init_is_seeded(make_backend, name):
    model = ModelSpec(init="framework")
    first = make_backend(name, model=model, seed=3, shared_init=False).get_params()
    again = make_backend(name, model=model, seed=3, shared_init=False).get_params()
    other = make_backend(name, model=model, seed=4, shared_init=False).get_params()
    assert {k: v.shape for k, v in first.items()} == model.param_shapes()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=f"{key}: same seed, different init")
    assert not np.array_equal(first["dense_0/kernel"], other["dense_0/kernel"]), "seed does not reach the init"


# --- rung 2: forward, noise off -----------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", BACKENDS)
def test_rung2_forward_eval_matches_oracle(make_backend, fashion, name, impl):
    model, train = ModelSpec(impl=impl), TrainSpec()
    x = fashion.test_x[:512]
    expected = oracle_for(model, train).forward(x=x, train=False)
    backend = make_backend(name, model=model, train=train)
    logits = backend.forward(x=x, train=False)
    assert_close(logits, expected, f"{name}/{impl} eval logits")
    assert_close(backend.forward(x=x, train=False), logits, "eval is deterministic", rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,mode", backend_mode_pairs())
def test_rung2_evaluate_is_noise_free_and_exact(make_backend, fashion, name, mode, impl):
    """evaluate() (the path the runner reports) with dropout 0.5 in the spec: the oracle's noise-free numbers."""
    model, train = ModelSpec(impl=impl, dropouts=(0.5, 0.5)), TrainSpec(mode=mode)
    x, y = fashion.test_x[:2000], fashion.test_y[:2000]
    reference = oracle_for(model, train).evaluate(x=x, y=y)
    backend = make_backend(name, model=model, train=train)
    first, second = backend.evaluate(x=x, y=y), backend.evaluate(x=x, y=y)
    assert_close(first.loss, reference.loss, f"{name}/{mode}/{impl} evaluate loss")
    assert abs(first.acc - reference.acc) <= 1 / 2000, f"evaluate accuracy {first.acc} != {reference.acc}"
    assert (second.loss, second.acc) == (first.loss, first.acc), "evaluate must be deterministic"


# --- rung 3: loss and gradients with injected noise ----------------------------------------------------------------
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", BACKENDS)
def test_rung3_loss_and_grads_match_oracle(make_backend, fashion, name, impl, noise):
    model = ModelSpec(impl=impl, noise=noise, dropouts=(0.3, 0.5))
    train = TrainSpec()
    x, y = fashion.train_x[:256], fashion.train_y[:256]
    masks = contract.draw_masks(model, 256, np.random.default_rng(11))
    loss_ref, grads_ref = oracle_for(model, train).loss_and_grads(x=x, y=y, masks=masks)
    backend = make_backend(name, model=model, train=train)
    loss, grads = backend.loss_and_grads(x=x, y=y, masks=masks)
    assert_close(loss, loss_ref, f"{name}/{impl}/{noise} loss")
    assert set(grads) == set(grads_ref)
    for key in grads_ref:
        assert_close(grads[key], grads_ref[key], f"{name}/{impl}/{noise} grad {key}")
    logits = backend.forward(x=x, train=True, masks=masks)
    assert_close(logits, oracle_for(model, train).forward(x=x, train=True, masks=masks), "train logits, injected")


# --- rung 4: twenty SGD steps, every step -------------------------------------------------------------------------
STEP_CASES = [pytest.param(impl, noise, 0.0, id=f"{impl}-{noise}") for impl in IMPLS for noise in NOISES]
STEP_CASES.append(pytest.param("concise", "dropout", 5e-3, id="concise-dropout-weightdecay"))


@pytest.mark.parametrize("impl,noise,weight_decay", STEP_CASES)
@pytest.mark.parametrize("name,mode", backend_mode_pairs())
def test_rung4_sgd_steps_match_oracle_every_step(make_backend, fashion, name, mode, impl, noise, weight_decay):
    model = ModelSpec(impl=impl, noise=noise)
    train = TrainSpec(mode=mode, weight_decay=weight_decay)
    oracle = oracle_for(model, train)
    backend = make_backend(name, model=model, train=train)
    rng = np.random.default_rng(5)
    for step in range(20):
        x = fashion.train_x[step * 256:(step + 1) * 256]
        y = fashion.train_y[step * 256:(step + 1) * 256]
        masks = contract.draw_masks(model, 256, rng)
        loss_ref = oracle.train_step(x=x, y=y, masks=masks)
        loss = backend.train_step(x=x, y=y, masks=masks)
        assert_close(loss, loss_ref, f"step {step} loss")
        params, params_ref = backend.get_params(), oracle.get_params()
        for key in params_ref:
            assert_close(params[key], params_ref[key], f"step {step} {key}")


@pytest.mark.parametrize("weight_decay", (0.0, 5e-3))
@pytest.mark.parametrize("name,mode", backend_mode_pairs())
def test_whole_epoch_without_noise_matches_oracle(make_backend, fashion, name, mode, weight_decay):
    """train_epoch (the path the runner times, compiled modes included) with the last partial batch kept, with and
    without weight decay (a backend may update differently without it, as MXNet's compiled epoch does)."""
    model, train = ModelSpec(dropouts=(0.0, 0.0)), TrainSpec(mode=mode, weight_decay=weight_decay)
    x, y = fashion.train_x[:1000], fashion.train_y[:1000]  # 3 full batches and one of 232
    order = np.random.default_rng(2).permutation(1000)
    batches = contract.EpochBatches(x=x, y=y, order=order, batch_size=256)
    oracle = oracle_for(model, train)
    expected = oracle.train_epoch(batches=batches)
    backend = make_backend(name, model=model, train=train)
    metrics = backend.train_epoch(batches=batches)
    assert_close(metrics.loss, expected.loss, "epoch mean loss")
    assert abs(metrics.acc - expected.acc) <= 1 / 1000, "epoch accuracy"
    for key, value in oracle.get_params().items():
        assert_close(backend.get_params()[key], value, f"after one epoch: {key}")
    evaluation, reference = backend.evaluate(x=fashion.test_x, y=fashion.test_y), oracle.evaluate(
        x=fashion.test_x, y=fashion.test_y)
    assert_close(evaluation.loss, reference.loss, "exact test loss")
    assert abs(evaluation.acc - reference.acc) <= 2 / 10_000, "exact test accuracy"


@pytest.mark.parametrize("name,mode", backend_mode_pairs())
def test_whole_epoch_trains_with_native_noise_on(make_backend, fashion, name, mode):
    """The rung above runs train_epoch at p = 0, where a path that forgot the training flag (Gluon's Dropout in
    predict mode, Keras' ``training`` lost, as in D2L's bug B1) would still pass. At p = 0.5 the same epoch must leave
    the noise-free trajectory by far more than the ladder's tolerance, and the model must still learn."""
    model, train = ModelSpec(dropouts=(0.5, 0.5)), TrainSpec(mode=mode)
    x, y = fashion.train_x[:1000], fashion.train_y[:1000]
    batches = contract.EpochBatches(x=x, y=y, order=np.random.default_rng(2).permutation(1000), batch_size=256)
    noise_free = oracle_for(dataclasses.replace(model, dropouts=(0.0, 0.0)), train)
    noise_free.train_epoch(batches=batches)
    backend = make_backend(name, model=model, train=train)
    start = backend.evaluate(x=fashion.test_x[:2000], y=fashion.test_y[:2000])
    backend.train_epoch(batches=batches)
    for key, value in noise_free.get_params().items():
        if key.endswith("/kernel"):
            error = float(np.abs(backend.get_params()[key] - value).max())
            assert error > 100 * RTOL * float(np.abs(value).max()), f"{key}: the epoch ran with the noise off"
    assert backend.evaluate(x=fashion.test_x[:2000], y=fashion.test_y[:2000]).loss < start.loss, "no learning"


@pytest.mark.parametrize("name,mode", backend_mode_pairs())
def test_native_noise_differs_between_consecutive_epochs(make_backend, fashion, name, mode):
    """Two epochs from the same weights on the same batches: the second epoch must draw new noise (a key or seed
    reset per epoch, or one compiled in as a constant, would repeat the first epoch's trajectory exactly)."""
    model, train = ModelSpec(dropouts=(0.5, 0.5)), TrainSpec(mode=mode)
    x, y = fashion.train_x[:768], fashion.train_y[:768]
    batches = contract.EpochBatches(x=x, y=y, order=np.random.default_rng(5).permutation(768), batch_size=256)
    backend = make_backend(name, model=model, train=train)
    start = backend.get_params()
    first = backend.train_epoch(batches=batches)
    after_first = backend.get_params()
    backend.set_params(params=start)
    second = backend.train_epoch(batches=batches)
    after_second = backend.get_params()
    moved = max(float(np.abs(after_second[k] - after_first[k]).max()) / float(np.abs(after_first[k]).max())
                for k in after_first if k.endswith("/kernel"))
    assert moved > 100 * RTOL, f"{name}/{mode}: epoch 2 repeated epoch 1's noise (relative change {moved:.2g})"
    assert first.loss != second.loss


@pytest.mark.parametrize("name,mode", backend_mode_pairs())
def test_evaluate_is_exact_over_several_chunks_with_an_uneven_last_one(make_backend, fashion, name, mode):
    """The backends evaluate in chunks of 10,000 examples: 23,457 examples make three, the last of 3,457. The
    reference is computed in one piece, from the oracle's logits over all of them."""
    model, train = ModelSpec(dropouts=(0.5, 0.5)), TrainSpec(mode=mode)
    x, y = fashion.train_x[:23_457], fashion.train_y[:23_457]
    logits = oracle_for(model, train).forward(x=x, train=False).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss, acc = -float(log_probs[np.arange(len(y)), y].mean()), float(np.mean(logits.argmax(axis=1) == y))
    evaluation = make_backend(name, model=model, train=train).evaluate(x=x, y=y)
    assert_close(evaluation.loss, loss, f"{name}/{mode} loss over 23,457 examples")
    assert abs(evaluation.acc - acc) <= 2 / len(y), f"{name}/{mode} accuracy {evaluation.acc} != {acc}"


# --- rung 5: native noise statistics ------------------------------------------------------------------------------
def _activations(backend, x, train):
    return backend.activations(x=x, train=train)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", BACKENDS)
def test_rung5_dropout_statistics(make_backend, fashion, name, impl):
    p = 0.5
    x = fashion.train_x[:2048]
    backend = make_backend(name, model=ModelSpec(impl=impl, dropouts=(p, p)))
    evaluated = _activations(backend, x, train=False)
    for layer in range(2):
        np.testing.assert_array_equal(evaluated[f"hidden_{layer}/post_noise"], evaluated[f"hidden_{layer}/pre_noise"],
                                      err_msg="noise must be off in evaluation")
    first, second = _activations(backend, x, train=True), _activations(backend, x, train=True)
    pre, post = first["hidden_0/pre_noise"], first["hidden_0/post_noise"]
    alive = pre > 0
    dropped = post[alive] == 0
    n = int(alive.sum())
    standard_error = np.sqrt(p * (1 - p) / n)
    assert abs(dropped.mean() - p) < 4 * standard_error, f"zero fraction {dropped.mean():.4f}, expected {p}"
    np.testing.assert_allclose(post[alive][~dropped], pre[alive][~dropped] / (1 - p), rtol=1e-6,
                               err_msg="survivors must be scaled by 1/(1-p)")
    assert abs(post.mean() - pre.mean()) < 4 * post.std() / np.sqrt(post.size), "dropout must preserve the mean"
    same_input = first["hidden_0/pre_noise"] > 0
    assert not np.array_equal(first["hidden_0/post_noise"][same_input] == 0,
                              second["hidden_0/post_noise"][same_input] == 0), "consecutive calls reuse a mask"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", BACKENDS)
def test_rung5_p0_is_identity_and_p1_gives_zeros(make_backend, fashion, name, impl):
    x, y = fashion.train_x[:512], fashion.train_y[:512]
    keep_all = make_backend(name, model=ModelSpec(impl=impl, dropouts=(0.0, 0.0)))
    activations = _activations(keep_all, x, train=True)
    for layer in range(2):
        np.testing.assert_array_equal(activations[f"hidden_{layer}/post_noise"],
                                      activations[f"hidden_{layer}/pre_noise"], err_msg="p = 0 must be the identity")
    drop_all = make_backend(name, model=ModelSpec(impl=impl, dropouts=(1.0, 1.0)))
    activations = _activations(drop_all, x, train=True)
    for layer in range(2):
        post = activations[f"hidden_{layer}/post_noise"]
        assert np.all(np.isfinite(post)) and np.all(post == 0), "p = 1 must give zeros, not NaN"
    logits = drop_all.forward(x=x, train=True)
    assert np.all(np.isfinite(logits))
    loss, grads = drop_all.loss_and_grads(x=x, y=y)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    np.testing.assert_array_equal(grads["dense_0/kernel"], 0, err_msg="nothing reaches layer 0 through p = 1")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", BACKENDS)
def test_rung5_same_seed_same_run_new_step_new_mask(make_backend, fashion, name, impl):
    model = ModelSpec(impl=impl)
    x, y = fashion.train_x[:256], fashion.train_y[:256]

    def three_native_steps(seed):
        backend = make_backend(name, model=model, seed=seed)
        losses = [backend.train_step(x=x, y=y) for _ in range(3)]
        return losses, backend.get_params()

    losses, params = three_native_steps(seed=1)
    losses_again, params_again = three_native_steps(seed=1)
    assert losses == losses_again, "the same seed must reproduce the same run"
    for key in params:
        np.testing.assert_array_equal(params[key], params_again[key], err_msg=key)
    losses_other, _ = three_native_steps(seed=2)
    assert losses_other != losses, "a different seed must draw different noise"
    backend = make_backend(name, model=model, seed=1)
    first, _ = backend.loss_and_grads(x=x, y=y)
    second, _ = backend.loss_and_grads(x=x, y=y)
    assert first != second, "two consecutive draws on the same batch and weights must differ"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", BACKENDS)
def test_rung5_gaussian_and_additive_statistics(make_backend, fashion, name, impl):
    x = fashion.train_x[:2048]
    p = 0.4
    gaussian = _activations(make_backend(name, model=ModelSpec(impl=impl, noise="gaussian", dropouts=(p, p))), x, True)
    pre, post = gaussian["hidden_0/pre_noise"], gaussian["hidden_0/post_noise"]
    alive = pre > 1e-3
    factor = post[alive] / pre[alive]
    n, variance = factor.size, p / (1 - p)
    assert abs(factor.mean() - 1) < 4 * np.sqrt(variance / n), f"gaussian mean factor {factor.mean():.4f}"
    assert abs(factor.var() / variance - 1) < 4 * np.sqrt(2 / n), f"gaussian variance {factor.var():.4f}"
    additive = _activations(make_backend(name, model=ModelSpec(impl=impl, noise="additive", dropouts=(p, p))), x, True)
    z = (additive["hidden_0/post_noise"] - additive["hidden_0/pre_noise"]) / p
    n = z.size
    assert abs(z.mean()) < 4 / np.sqrt(n), f"additive noise mean {z.mean():.4f}"
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / n), f"additive noise std {z.std():.4f}, expected {p}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", BACKENDS)
def test_rung5_dropconnect_masks_weights(make_backend, fashion, name, impl):
    p = 0.5
    x, y = fashion.train_x[:512], fashion.train_y[:512]
    backend = make_backend(name, model=ModelSpec(impl=impl, noise="dropconnect", dropouts=(p, p)))
    activations = _activations(backend, x, train=True)
    np.testing.assert_array_equal(activations["hidden_0/post_noise"], activations["hidden_0/pre_noise"],
                                  err_msg="dropconnect leaves activations alone")
    # The last kernel's gradient is h^T (softmax - onehot) * mask / (1 - p): softmax - onehot is never exactly 0, so
    # beyond the rows of dead units every exact zero is a masked weight. Eight draws pool 8 x 256 x 10 entries.
    # A unit of hidden layer 1 can be dead in one draw and alive in the next (its inputs are masked too), so dead
    # rows are dropped per draw.
    kernels = [backend.loss_and_grads(x=x, y=y)[1]["dense_2/kernel"] for _ in range(8)]
    masked = np.concatenate([(k[np.any(k != 0, axis=1)] == 0).ravel() for k in kernels])
    assert abs(masked.mean() - p) < 4 * np.sqrt(p * (1 - p) / masked.size), f"masked weights {masked.mean():.4f}"
    assert not np.array_equal(kernels[0] == 0, kernels[1] == 0), "a new step needs a new weight mask"
    evaluated = backend.forward(x=x, train=False)
    assert_close(evaluated, oracle_for(backend.model, TrainSpec()).forward(x=x, train=False), "eval ignores masks")


# --- rung 6: concise and scratch are the same function --------------------------------------------------------------
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("name", BACKENDS)
def test_rung6_concise_and_scratch_agree(make_backend, fashion, name, noise):
    x, y = fashion.train_x[:256], fashion.train_y[:256]
    results = {}
    for impl in IMPLS:
        model = ModelSpec(impl=impl, noise=noise)
        masks = contract.draw_masks(model, 256, np.random.default_rng(3))
        backend = make_backend(name, model=model)
        results[impl] = (backend.forward(x=x, train=False), *backend.loss_and_grads(x=x, y=y, masks=masks))
    assert_close(results["scratch"][0], results["concise"][0], "eval logits")
    assert_close(results["scratch"][1], results["concise"][1], "loss")
    for key, grad in results["concise"][2].items():
        assert_close(results["scratch"][2][key], grad, f"grad {key}")
