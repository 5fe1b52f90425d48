"""The NumPy backend's tuned tier against its stock tier (the fused step, the in-place forward pass, the bit masks,
the byte gather), the exact tricks it rests on, its CBLAS binding and its probes."""
import numpy as np
import pytest

from backends import contract
from backends.contract.spec import ModelSpec, TrainSpec
from backends.numpy import backend as stock, probes, tuned

# (batch, hiddens, rates): D2L's shapes, odd word counts (the contract's own draw takes over), p = 0 and p = 1, and
# larger batches with odd widths
SHAPES = [(256, (256, 256), (0.5, 0.5)), (6, (9, 7), (0.3, 0.6)), (5, (3, 7), (0.2, 0.7)), (5, (3, 7), (0.0, 1.0)),
          (600, (256, 7), (0.5, 0.3)), (301, (255, 9), (0.4, 0.5))]
ULP = np.finfo(np.float32).eps


def _pair(model, weight_decay=0.0):
    fast, plain = tuned.Backend(model=model, train=TrainSpec(weight_decay=weight_decay, tuning="tuned")), \
        stock.Backend(model=model, train=TrainSpec(weight_decay=weight_decay))
    fast.build(seed=0)
    plain.build(seed=0)
    return fast, plain


def _shadow(rng):
    """A generator at ``rng``'s stream position, apart from it."""
    copy = np.random.Generator(type(rng.bit_generator)())
    copy.bit_generator.state = rng.bit_generator.state
    return copy


def _tuned_law(model, batch, rng):
    """The draws the tuned tier's own noise takes from ``rng``: ``contract.draw_keep``'s keep masks for dropout kinds
    (the bit fields, or the uniforms' words), the stock ``draw_masks`` otherwise."""
    if model.noise not in ("dropout", "dropconnect"):
        return contract.draw_masks(model, batch, rng)
    return [contract.draw_keep(rng, shape, p).astype(np.float32)
            for shape, p in zip(contract.noise_shapes(model, batch), model.dropouts)]


def _stream_position(rng):
    """PCG64's state and whether half an output is buffered; the stale buffer word is kept only when it is used."""
    state = rng.bit_generator.state
    return state["state"], state["has_uint32"], state["uinteger"] if state["has_uint32"] else None


def _assert_params_close(fast, plain, what=""):
    for name, value in plain.params.items():  # other summation orders: a few ulps of the kernel's scale
        np.testing.assert_allclose(fast.params[name], value, rtol=0, atol=4 * ULP * np.abs(value).max(),
                                   err_msg=f"{name} {what}")


@pytest.mark.parametrize("noise", ["dropout", "gaussian", "additive", "dropconnect"])
@pytest.mark.parametrize("injected", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("batch,hiddens,rates", SHAPES)
def test_the_tuned_step_is_the_stock_step_under_the_tuned_draws(noise, injected, weight_decay, batch, hiddens,
                                                                 rates):
    """Injected masks: the same step. Native noise: the stock step under the masks the tuned tier's law draws from
    the same stream position (``contract.draw_keep``), which the fused step's in-place draw must match bit for bit,
    and leave the stream where that draw leaves it, step after step."""
    if noise in ("gaussian", "additive") and max(rates) >= 1:
        rates = (rates[0], 0.9)  # Gaussian kinds take p < 1
    model = ModelSpec(num_inputs=12, hiddens=hiddens, num_outputs=5, dropouts=rates, noise=noise)
    rng = np.random.default_rng(1)
    x, y = rng.random((batch, 12), dtype=np.float32), rng.integers(0, 5, batch)
    fast, plain = _pair(model, weight_decay)
    for _ in range(3):
        shadow = _shadow(fast.rng)
        masks = contract.draw_masks(model, batch, rng) if injected else None
        fast_loss, fast_correct = fast._step(x, y, masks)
        plain_loss, plain_correct = plain._step(x, y, masks if injected else _tuned_law(model, batch, shadow))
        assert fast_correct == plain_correct
        assert fast_loss == pytest.approx(plain_loss, rel=1e-6)
        assert _stream_position(fast.rng) == _stream_position(shadow)
    _assert_params_close(fast, plain)


def test_the_fused_step_follows_new_batches_and_replaced_parameters():
    """The fused step binds its products to the arrays it was given (``tuned.bind``): a new batch array and
    parameters replaced by ``set_params`` between steps must be what the next step reads and updates."""
    model = ModelSpec(num_inputs=12, hiddens=(8, 6), num_outputs=5, dropouts=(0.2, 0.5))
    rng = np.random.default_rng(4)
    fast, plain = _pair(model, 0.01)
    for step in range(4):
        x, y = rng.random((16, 12), dtype=np.float32), rng.integers(0, 5, 16)  # a new array at every step
        if step == 2:
            new = {name: (value * 0.5).astype(np.float32) for name, value in plain.params.items()}
            fast.set_params(params=new)
            plain.set_params(params=new)
        masks = contract.draw_masks(model, 16, rng)
        assert fast._step(x, y, masks)[0] == pytest.approx(plain._step(x, y, masks)[0], rel=1e-6)
        _assert_params_close(fast, plain, f"after step {step}")


def test_the_fused_step_updates_the_hidden_units_its_own_dropout_kept():
    """The native masks are ``contract.draw_keep``'s: the hidden units whose outgoing weights a step changes are the
    ones the stock step changes under those masks, some but not all."""
    model = ModelSpec(num_inputs=20, hiddens=(64,), num_outputs=3, dropouts=(0.5,))
    rng = np.random.default_rng(2)
    x, y = rng.random((32, 20), dtype=np.float32), rng.integers(0, 3, 32)
    fast, plain = _pair(model)
    before = plain.get_params()["dense_1/kernel"]
    masks = _tuned_law(model, 32, _shadow(fast.rng))
    fast._step(x, y, None)
    plain._step(x, y, masks)
    changed = [np.abs(b.params["dense_1/kernel"] - before).sum(axis=1) > 0 for b in (fast, plain)]
    np.testing.assert_array_equal(changed[0], changed[1])
    assert 0 < changed[0].sum() < 64


@pytest.mark.parametrize("noise", ["dropout", "dropconnect", "gaussian", "additive"])
def test_the_in_place_forward_pass_is_the_stock_one(noise):
    """Evaluation, ``forward``, ``loss_and_grads`` and ``activations`` of the tuned tier (``InPlaceMLP``) are the
    stock tier's under the same masks, to a few ulps."""
    model = ModelSpec(num_inputs=30, hiddens=(40, 24), num_outputs=5, dropouts=(0.3, 0.5), noise=noise)
    rng = np.random.default_rng(8)
    x, y = rng.random((64, 30), dtype=np.float32), rng.integers(0, 5, 64)
    fast, plain = _pair(model)
    masks = contract.draw_masks(model, 64, rng)
    for train in (False, True):
        a, b = (m.forward(x=x, train=train, masks=masks) for m in (fast, plain))
        np.testing.assert_allclose(a, b, rtol=0, atol=8 * ULP * np.abs(b).max())
        for key, value in plain.activations(x=x, train=train, masks=masks).items():
            got = fast.activations(x=x, train=train, masks=masks)[key]
            np.testing.assert_allclose(got, value, rtol=0, atol=8 * ULP * np.abs(value).max(), err_msg=key)
    (loss_a, grads_a), (loss_b, grads_b) = (m.loss_and_grads(x=x, y=y, masks=masks) for m in (fast, plain))
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for key, value in grads_b.items():
        np.testing.assert_allclose(grads_a[key], value, rtol=0, atol=8 * ULP * np.abs(value).max(), err_msg=key)
    assert fast.evaluate(x=x, y=y).acc == plain.evaluate(x=x, y=y).acc
    pre_a, pre_b = fast.pre_activations(x=x, masks=masks), plain.pre_activations(x=x, masks=masks)
    assert len(pre_a) == len(pre_b) == 2 and all(np.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(pre_a, pre_b))


@pytest.mark.parametrize("p", [0.5, 0.1, 0.3, 0.7, 1e-9, 0.99999994, 2.0 ** -24, 1 - 2.0 ** -24, 1 / 3])
def test_keep_threshold_is_exactly_float32_uniform_above_p(p):
    threshold = tuned.keep_threshold(p)
    centre = threshold if threshold is not None else 2 ** 32 - 1
    words = np.arange(max(centre - 4096, 0), min(centre + 4096, 2 ** 32), dtype=np.uint64).astype(np.uint32)
    uniforms = (words >> 8).astype(np.float32) * np.float32(2.0 ** -24)
    expected = uniforms > p
    got = words > threshold if threshold is not None else np.zeros_like(expected)
    np.testing.assert_array_equal(got, expected)
    if p < 0.999:  # the window straddles the threshold: both decisions are tested
        assert expected.any() and not expected.all()
    assert tuned.keep_threshold(1.0) is None


def test_words_are_the_stream_generator_random_float32_reads():
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for count in (8, 65536, 2):
        words = tuned.draw_words(a, count)
        np.testing.assert_array_equal((words >> 8) * np.float32(2.0 ** -24), b.random(count, dtype=np.float32))
    b.random(3, dtype=np.float32)  # an odd draw leaves half a 64-bit output in the generator
    assert tuned.draw_words(b, 4) is None
    assert tuned.draw_words(a, 3) is None


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_keep_fields_are_the_raw_outputs_bits_in_order(bits):
    """Field k is bits k*b .. k*b+b-1 of the raw 64-bit stream (little-endian), and ceil(count*b/64) outputs are
    consumed: recomputed here from the outputs as Python integers."""
    count = 1001  # not a whole number of outputs at any b
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    fields = contract.keep_fields(a, count, bits)
    outputs = [int(w) for w in b.bit_generator.random_raw(-(-count * bits // 64))]
    expected = [(outputs[k * bits // 64] >> (k * bits % 64)) & ((1 << bits) - 1) for k in range(count)]
    assert fields.dtype == np.uint8 and fields.tolist() == expected
    assert a.bit_generator.state == b.bit_generator.state


@pytest.mark.parametrize("p", [0.5, 0.25, 0.75, 1 - 3 / 16, 0.2, 0.0, 1.0])
def test_bit_masks_have_the_law_of_keep_with_probability_1_minus_p(p):
    """``draw_keep``: from bit fields at a dyadic 1 - p (every field value counted: exactly j of 2**b are kept),
    from ``uniform > p`` otherwise; its mean within four standard errors of 1 - p, neighbours independent, and the
    fused step's in-place draw the same mask from the same stream position."""
    dyadic = contract.dyadic_keep(1.0 - p)
    if dyadic is not None:
        bits, kept = dyadic
        assert sum(field >= (1 << bits) - kept for field in range(1 << bits)) == kept
    shape = (1000, 301)
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    keep = contract.draw_keep(a, shape, p)
    assert keep.shape == shape and keep.dtype == bool
    flat, n, q = keep.reshape(-1).astype(np.float64), keep.size, 1.0 - p
    assert abs(flat.mean() - q) <= 4 * np.sqrt(q * (1 - q) / n)
    assert abs((flat[:-1] * flat[1:]).mean() - q * q) <= 4 * np.sqrt(q * q * (1 - q * q) / (n - 1)) + 1e-12
    in_place = np.empty(shape, bool)
    tuned.draw_keep(b, in_place, p)
    np.testing.assert_array_equal(in_place, keep)
    assert _stream_position(a) == _stream_position(b)


def test_gemm_through_numpys_blas_and_its_fallback():
    assert tuned.blas_library(np.float32) is not None, "NumPy's CBLAS sgemm was not found: the fused step falls back"
    rng = np.random.default_rng(3)
    for m, k, n in [(7, 5, 3), (64, 33, 17), (1, 4, 1)]:
        for trans_a in (False, True):
            for trans_b in (False, True):
                a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
                b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
                a, b = (a.T if trans_a else a), (b.T if trans_b else b)
                start = rng.standard_normal((m, n), dtype=np.float32)
                expected = 0.9 * start.astype(np.float64) - 0.1 * (a.astype(np.float64) @ b)
                for use_blas in (True, False):
                    c = start.copy()
                    tuned.gemm(-0.1, a, b, 0.9, c, use_blas=use_blas)
                    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)
                c = start.copy()
                tuned.gemm(1.0, a, b, 0.0, c)
                np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
                c = start.copy()
                bound = tuned.bind(-0.1, a, b, 0.9, c)  # the same product, its arguments bound once
                bound()
                np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)
                bound()  # called again: the update applied to what c holds now
                np.testing.assert_allclose(c, 0.9 * expected - 0.1 * (a.astype(np.float64) @ b), rtol=1e-5,
                                           atol=1e-5)
    with pytest.raises(ValueError, match="disagree"):
        tuned.gemm(1.0, np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), 0.0, np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="disagree"):
        tuned.bind(1.0, np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), 0.0, np.ones((2, 3), np.float32))


def test_byte_images_are_the_float_images_exactly_and_nothing_else(fashion):
    """The harness's images (uint8 / 255 in float32) come back as their bytes, which divided by 255 in float32 are
    the same floats bit for bit; data off that grid, NaN, -0.0, float64 or 1-d data get None."""
    x = fashion.train_x[:3000]
    images = tuned.byte_images(x)
    assert images is not None and images.dtype == np.uint8 and images.shape == x.shape
    assert np.array_equal(np.divide(images, np.float32(255)).view(np.uint32), x.view(np.uint32))
    off_grid = x.copy()
    off_grid[1234, 400] = np.nextafter(off_grid[1234, 400], np.float32(1))
    nan, negative_zero = x.copy(), x.copy()
    nan[2999, 0] = np.nan
    negative_zero[0, 0] = -0.0
    for bad in (off_grid, nan, negative_zero, x * np.float32(1.5), x.astype(np.float64), x[0]):
        assert tuned.byte_images(bad) is None


def test_an_epoch_gathered_from_bytes_is_the_epoch_gathered_from_floats(fashion, monkeypatch):
    """The same seed and order give the same parameters and metrics to the bit whether the batches are taken from
    the split's bytes or from its floats (the split is checked once and kept)."""
    x, y = fashion.train_x[:1000], fashion.train_y[:1000]
    batches = contract.EpochBatches(x=x, y=y, order=np.random.default_rng(0).permutation(1000), batch_size=256)

    def run():
        backend = tuned.Backend(model=ModelSpec(), train=TrainSpec(tuning="tuned"))
        backend.build(seed=0)
        metrics = [backend.train_epoch(batches=batches) for _ in range(2)]
        return backend, metrics, backend.get_params()
    from_bytes, metrics, params = run()
    assert from_bytes._byte_split[0] is x and from_bytes._byte_split[1] is not None
    monkeypatch.setattr(tuned, "byte_images", lambda array: None)
    from_floats, metrics_floats, params_floats = run()
    assert from_floats._byte_split[1] is None
    assert metrics == metrics_floats
    for key in params:
        assert np.array_equal(params[key], params_floats[key]), key


def test_tuned_probes_name_the_cblas_call_compute_the_products_and_draw_bit_masks():
    backend = tuned.Backend(model=ModelSpec(hiddens=(24, 16)), train=TrainSpec(batch_size=8, tuning="tuned"))
    backend.build(seed=0)
    assert tuned.blas_library(np.float32) in probes.gemm_library(backend, m=8, k=784, n=24)
    products = [{"m": 8, "k": 784, "n": 24, "ta": False, "tb": False}, {"m": 784, "k": 8, "n": 24, "ta": True,
                                                                           "tb": False},
                {"m": 8, "k": 24, "n": 784, "ta": False, "tb": True}]
    stock_backend = stock.Backend(model=ModelSpec(hiddens=(24, 16)), train=TrainSpec(batch_size=8))
    stock_backend.build(seed=0)
    expected = probes.gemm_step_probe(stock_backend, products=products)()  # the same operands, through matmul
    results = probes.gemm_step_probe(backend, products=products, rounds=3)()
    assert [r.shape for r in results] == [(8, 24), (784, 24), (8, 784)]
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    state = backend.rng.bit_generator.state
    label, draw = probes.noise_probe(backend, batch_size=8)
    draw()
    assert label == "1 PCG64 bit(s) an element (NumPy)" and backend.rng.bit_generator.state == state
