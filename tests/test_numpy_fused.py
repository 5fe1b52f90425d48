"""The NumPy backend's fused training step against its plain one, and the two exact tricks it rests on."""
import numpy as np
import pytest

from backends import contract, numpy_blas, numpy_fused
from backends.contract.spec import ModelSpec, TrainSpec
from backends.numpy_ref import Backend

# (batch, hiddens, rates): D2L's shapes, odd word counts (the contract's own draw takes over), p = 0 and p = 1, and
# larger batches with odd widths
SHAPES = [(256, (256, 256), (0.5, 0.5)), (6, (9, 7), (0.3, 0.6)), (5, (3, 7), (0.2, 0.7)), (5, (3, 7), (0.0, 1.0)),
          (600, (256, 7), (0.5, 0.3)), (301, (255, 9), (0.4, 0.5))]


def _pair(model, weight_decay):
    fused, plain = (Backend(model=model, train=TrainSpec(weight_decay=weight_decay)) for _ in range(2))
    fused.build(seed=0)
    plain.build(seed=0)
    plain.fused = False
    return fused, plain


@pytest.mark.parametrize("noise", ["dropout", "gaussian", "additive"])
@pytest.mark.parametrize("injected", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("batch,hiddens,rates", SHAPES)
def test_fused_step_is_the_plain_step(noise, injected, weight_decay, batch, hiddens, rates):
    if noise != "dropout" and max(rates) >= 1:
        rates = (rates[0], 0.9)  # Gaussian kinds take p < 1
    model = ModelSpec(num_inputs=12, hiddens=hiddens, num_outputs=5, dropouts=rates, noise=noise)
    rng = np.random.default_rng(1)
    x, y = rng.random((batch, 12), dtype=np.float32), rng.integers(0, 5, batch)
    fused, plain = _pair(model, weight_decay)
    for _ in range(3):  # the native stream must stay aligned step after step
        masks = contract.draw_masks(model, batch, rng) if injected else None
        fused_loss, fused_correct = fused._step(x, y, masks)
        plain_loss, plain_correct = plain._step(x, y, masks)
        assert fused_correct == plain_correct
        assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    ulp = np.finfo(np.float32).eps
    for name, value in plain.params.items():  # 3 steps of other summation orders: a few ulps of the kernel's scale
        np.testing.assert_allclose(fused.params[name], value, rtol=0, atol=4 * ulp * np.abs(value).max(), err_msg=name)
    assert _stream_position(fused.rng) == _stream_position(plain.rng)


def test_fused_step_follows_new_batches_and_replaced_parameters():
    """The fused step binds its products to the arrays it was given (``numpy_blas.bind``): a new batch array and
    parameters replaced by ``set_params`` between steps must be what the next step reads and updates."""
    model = ModelSpec(num_inputs=12, hiddens=(8, 6), num_outputs=5, dropouts=(0.2, 0.5))
    rng = np.random.default_rng(4)
    fused, plain = _pair(model, 0.01)
    ulp = np.finfo(np.float32).eps
    for step in range(4):
        x, y = rng.random((16, 12), dtype=np.float32), rng.integers(0, 5, 16)  # a new array at every step
        if step == 2:
            new = {name: (value * 0.5).astype(np.float32) for name, value in plain.params.items()}
            fused.set_params(params=new)
            plain.set_params(params=new)
        masks = contract.draw_masks(model, 16, rng)
        assert fused._step(x, y, masks)[0] == pytest.approx(plain._step(x, y, masks)[0], rel=1e-6)
        for name, value in plain.params.items():
            np.testing.assert_allclose(fused.params[name], value, rtol=0, atol=4 * ulp * np.abs(value).max(),
                                       err_msg=f"{name} after step {step}")


def _stream_position(rng):
    """PCG64's state and whether half an output is buffered; the stale buffer word is kept only when it is used."""
    state = rng.bit_generator.state
    return state["state"], state["has_uint32"], state["uinteger"] if state["has_uint32"] else None


def test_fused_step_keeps_what_the_unfused_dropout_zeroes():
    """Native masks are the contract's bit for bit: the hidden units a step updates are the same in both."""
    model = ModelSpec(num_inputs=20, hiddens=(64,), num_outputs=3, dropouts=(0.5,))
    rng = np.random.default_rng(2)
    x, y = rng.random((32, 20), dtype=np.float32), rng.integers(0, 3, 32)
    fused, plain = _pair(model, 0.0)
    before = plain.get_params()["dense_1/kernel"]
    fused._step(x, y, None)
    plain._step(x, y, None)
    changed = [np.abs(b.params["dense_1/kernel"] - before).sum(axis=1) > 0 for b in (fused, plain)]
    np.testing.assert_array_equal(changed[0], changed[1])
    assert 0 < changed[0].sum() < 64


@pytest.mark.parametrize("p", [0.5, 0.1, 0.3, 0.7, 1e-9, 0.99999994, 2.0 ** -24, 1 - 2.0 ** -24, 1 / 3])
def test_keep_threshold_is_exactly_float32_uniform_above_p(p):
    threshold = numpy_fused.keep_threshold(p)
    centre = threshold if threshold is not None else 2 ** 32 - 1
    words = np.arange(max(centre - 4096, 0), min(centre + 4096, 2 ** 32), dtype=np.uint64).astype(np.uint32)
    uniforms = (words >> 8).astype(np.float32) * np.float32(2.0 ** -24)
    expected = uniforms > p
    got = words > threshold if threshold is not None else np.zeros_like(expected)
    np.testing.assert_array_equal(got, expected)
    if p < 0.999:  # the window straddles the threshold: both decisions are tested
        assert expected.any() and not expected.all()
    assert numpy_fused.keep_threshold(1.0) is None


def test_words_are_the_stream_generator_random_float32_reads():
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for count in (8, 65536, 2):
        words = numpy_fused.draw_words(a, count)
        np.testing.assert_array_equal((words >> 8) * np.float32(2.0 ** -24), b.random(count, dtype=np.float32))
    b.random(3, dtype=np.float32)  # an odd draw leaves half a 64-bit output in the generator
    assert numpy_fused.draw_words(b, 4) is None
    assert numpy_fused.draw_words(a, 3) is None


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
def test_native_keep_masks_have_the_law_of_keep_with_probability_1_minus_p(p):
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
    numpy_fused.draw_keep(b, in_place, p)
    np.testing.assert_array_equal(in_place, keep)
    assert _stream_position(a) == _stream_position(b)


def test_gemm_through_numpys_blas_and_its_fallback():
    assert numpy_blas.library(np.float32) is not None, "NumPy's CBLAS sgemm was not found: the fused step falls back"
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
                    numpy_blas.gemm(-0.1, a, b, 0.9, c, use_blas=use_blas)
                    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)
                c = start.copy()
                numpy_blas.gemm(1.0, a, b, 0.0, c)
                np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
                c = start.copy()
                bound = numpy_blas.bind(-0.1, a, b, 0.9, c)  # the same product, its arguments bound once
                bound()
                np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)
                bound()  # called again: the update applied to what c holds now
                np.testing.assert_allclose(c, 0.9 * expected - 0.1 * (a.astype(np.float64) @ b), rtol=1e-5,
                                           atol=1e-5)
    with pytest.raises(ValueError, match="disagree"):
        numpy_blas.gemm(1.0, np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), 0.0, np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="disagree"):
        numpy_blas.bind(1.0, np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), 0.0, np.ones((2, 3), np.float32))


def test_byte_images_are_the_float_images_exactly_and_nothing_else(fashion):
    """The harness's images (uint8 / 255 in float32) come back as their bytes, which divided by 255 in float32 are
    the same floats bit for bit; data off that grid, NaN, -0.0, float64 or 1-d data get None."""
    x = fashion.train_x[:3000]
    images = numpy_fused.byte_images(x)
    assert images is not None and images.dtype == np.uint8 and images.shape == x.shape
    assert np.array_equal(np.divide(images, np.float32(255)).view(np.uint32), x.view(np.uint32))
    off_grid = x.copy()
    off_grid[1234, 400] = np.nextafter(off_grid[1234, 400], np.float32(1))
    nan, negative_zero = x.copy(), x.copy()
    nan[2999, 0] = np.nan
    negative_zero[0, 0] = -0.0
    for bad in (off_grid, nan, negative_zero, x * np.float32(1.5), x.astype(np.float64), x[0]):
        assert numpy_fused.byte_images(bad) is None


def test_an_epoch_gathered_from_bytes_is_the_epoch_gathered_from_floats(fashion, monkeypatch):
    """The same seed and order give the same parameters and metrics to the bit whether the batches are taken from
    the split's bytes or from its floats (the split is checked once and kept)."""
    x, y = fashion.train_x[:1000], fashion.train_y[:1000]
    batches = contract.EpochBatches(x=x, y=y, order=np.random.default_rng(0).permutation(1000), batch_size=256)

    def run():
        backend = Backend(model=ModelSpec(), train=TrainSpec())
        backend.build(seed=0)
        metrics = [backend.train_epoch(batches=batches) for _ in range(2)]
        return backend, metrics, backend.get_params()
    from_bytes, metrics, params = run()
    assert from_bytes._byte_split[0] is x and from_bytes._byte_split[1] is not None
    monkeypatch.setattr(numpy_fused, "byte_images", lambda array: None)
    from_floats, metrics_floats, params_floats = run()
    assert from_floats._byte_split[1] is None
    assert metrics == metrics_floats
    for key in params:
        assert np.array_equal(params[key], params_floats[key]), key
