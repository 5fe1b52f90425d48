"""The NumPy backend's training step, fused: the oracle's maths over preallocated buffers, in fewer memory passes.

Same model, same loss, same SGD update, same noise draws as ``numpy_ref.Backend._loss_grads`` plus its update; what
changes is where the arithmetic happens:

- every array of the step is a buffer kept per batch size, written with ``out=``;
- the bias is the GEMM's ``beta = 1`` start value, and the SGD update ``W <- (1 - lr*wd) W - lr X^T dZ`` is the
  kernel-gradient GEMM itself (``numpy_blas.gemm``), so no pass of the main thread reads back what the BLAS threads
  wrote. Each input gradient is taken before its kernel is updated, as the unfused step does;
- ReLU and noise are one multiplier per hidden layer, ``dm = [z > 0] * mult``: the forward is ``h = z * dm + offset``
  and the backward ``dh * dm``. ``z * dm`` equals ``ReLU(z) * mult`` but for the sign of a zero, and for a ``z`` of
  -inf (only weights or inputs that have already overflowed give one), which becomes NaN instead of 0;
- native dropout's keep mask is ``contract.draw_keep``'s, bit for bit: at a dyadic keep probability (D2L's 0.5)
  its b-bit fields compared in place; at any other rate PCG64's raw 32-bit words compared with an integer
  threshold, the same words, in the same order, that ``Generator.random(dtype=float32)`` turns into
  ``u = (w >> 8) / 2**24`` before ``u > p`` (``keep_threshold`` says why the threshold is exact), without the float
  conversion;
- each hidden layer's activation overwrites its pre-activation (``Workspace.h`` is ``Workspace.z``): nothing reads
  ``z`` after ``h = z * dm``, and a product written over one of its operands skips the write-allocate reads of a
  third megabyte-sized buffer;
- the logits are computed transposed, (classes, batch), so that the softmax reduces along contiguous rows;
- the step's eight products are CBLAS calls bound once to the batch buffer, the kernels and the workspace
  (``numpy_blas.bind``, made again when one of those arrays is another one), not a ``gemm`` wrapper per call.
- the training split's images, where they are exactly ``uint8 / 255`` (``byte_images`` checks, bit for bit), are
  gathered as bytes and divided by 255 in float32 (``gather_rows``): the same floats, a quarter of the memory read.

Rounding differs from the unfused step at the last bit (other summation orders); the parity ladder holds this step
to the float64 oracle, which keeps the plain code.
"""
from __future__ import annotations

import numpy as np

from backends import contract, numpy_blas

_WORD_BITS = 24  # Generator.random(dtype=float32) keeps the top 24 bits of each 32-bit word


def keep_threshold(p: float) -> int | None:
    """The largest 32-bit word that ``u > p`` drops, or None when every word is dropped (p >= 1).

    ``u = (w >> 8) * 2**-24`` is exact in float32, and NumPy compares it with float32(p). For an integer
    ``k = w >> 8``, ``k * 2**-24 > f`` holds exactly when ``k > floor(f * 2**24)``, that is when
    ``w > floor(f * 2**24) * 256 + 255``."""
    bound = int(np.float32(p) * np.float64(2 ** _WORD_BITS))
    threshold = (bound << 8) | 0xFF
    return None if threshold >= 2 ** 32 else threshold


def draw_words(rng: np.random.Generator, count: int) -> np.ndarray | None:
    """``count`` 32-bit words of ``rng``'s stream exactly as ``rng.random(count, dtype=float32)`` consumes them, or
    None where that cannot be guaranteed (an odd count or a half-used 64-bit output): PCG64 serves 32-bit draws as
    the low then the high half of each 64-bit output."""
    bit_generator = rng.bit_generator
    if count % 2 or not isinstance(bit_generator, np.random.PCG64) or bit_generator.state["has_uint32"]:
        return None
    return bit_generator.random_raw(count // 2).view(np.uint32)


def byte_images(x: np.ndarray) -> np.ndarray | None:
    """``x`` as uint8 where it is exactly ``uint8 / 255`` in float32, bit for bit (the harness's images are), else
    None. A batch taken from these bytes and divided by 255 in float32 is the same rows of ``x`` at a quarter of the
    gather's memory traffic; any other data (a value off the grid, NaN, -0.0, another dtype) keeps the float gather."""
    if x.dtype != np.float32 or x.ndim != 2:
        return None
    images = np.empty(x.shape, np.uint8)
    scaled = np.empty((min(len(x), 8192), x.shape[1]), np.float32)
    back = np.empty_like(scaled)
    for start in range(0, len(x), 8192):  # in chunks: the check's buffers stay small
        chunk, out = x[start:start + 8192], images[start:start + 8192]
        work, again = scaled[:len(chunk)], back[:len(chunk)]
        np.rint(np.multiply(chunk, np.float32(255), out=work), out=work)
        with np.errstate(invalid="ignore"):  # NaN or a value off 0..255 casts to some byte, which the check rejects
            out[...] = work
        np.divide(out, np.float32(255), out=again)
        if not np.array_equal(again.view(np.uint32), chunk.view(np.uint32)):
            return None
    return images


def gather_rows(x: np.ndarray, images: np.ndarray | None, rows: np.ndarray, out: np.ndarray,
                byte_buffer: np.ndarray) -> np.ndarray:
    """``x[rows]`` into ``out`` (a buffer of at least ``len(rows)`` rows), from ``images = byte_images(x)`` where it is
    not None. mode="clip" skips the bounds check of "raise" (a third of a float gather's time); rows are valid."""
    out = out[:len(rows)]
    if images is None:
        return np.take(x, rows, axis=0, out=out, mode="clip")
    taken = np.take(images, rows, axis=0, out=byte_buffer[:len(rows)], mode="clip")
    return np.divide(taken, np.float32(255), out=out)


class Workspace:
    """Every buffer of one training step at one batch size."""

    def __init__(self, sizes, batch: int, dtype) -> None:
        hidden = sizes[1:-1]
        self.z = [np.empty((batch, width), dtype) for width in hidden]
        self.multiplier = [np.empty((batch, width), dtype) for width in hidden]
        self.h = self.z  # written in place over the pre-activation, which nothing reads afterwards
        self.dh = [np.empty((batch, width), dtype) for width in hidden]
        self.keep = [np.empty((batch, width), bool) for width in hidden]
        self.positive = [np.empty((batch, width), bool) for width in hidden]
        self.bias_grad = [np.empty(width, dtype) for width in sizes[1:]]
        self.logits_t = np.empty((sizes[-1], batch), dtype)
        self.probs_t = np.empty((sizes[-1], batch), dtype)
        self.ones = np.ones(batch, dtype)
        self.columns = np.arange(batch)
        self.bound_key: tuple | None = None  # what ``bound`` was made for (``_bound_gemms``)
        self.bound_arrays: tuple = ()  # the arrays it points into, kept alive so that their ids and addresses hold
        self.bound: dict = {}


def draw_keep(rng: np.random.Generator, keep: np.ndarray, p: float) -> None:
    """``contract.draw_keep(rng, keep.shape, p)`` written into ``keep``, exactly as the plain step draws it: the same
    bit fields at a dyadic keep probability, else the float32 uniforms' own 32-bit words against
    ``keep_threshold``."""
    if p == 0:  # draw_keep consumes nothing for p = 0
        keep.fill(True)
        return
    dyadic = contract.dyadic_keep(1.0 - p)
    if dyadic is not None:
        bits, kept = dyadic
        np.greater_equal(contract.keep_fields(rng, keep.size, bits).reshape(keep.shape), (1 << bits) - kept, out=keep)
        return
    words = draw_words(rng, keep.size)
    if words is None:
        np.greater(rng.random(keep.shape, dtype=np.float32), p, out=keep)
        return
    threshold = keep_threshold(p)
    if threshold is None:
        keep.fill(False)
    else:
        np.greater(words.reshape(keep.shape), threshold, out=keep)


NATIVE_KEEP = "keep"  # in ``_layer_noise``'s terms: native dropout, whose keep mask is in ``ws.keep``


def _layer_noise(backend, ws: Workspace, masks, native_dropout: bool) -> list[tuple]:
    """Per hidden layer (multiplier of ``[z > 0]``, offset added after): the oracle's ``_noise_terms``, or for the
    backend's own dropout (NATIVE_KEEP, 1/(1-p)) with the keep mask drawn into ``ws.keep``."""
    if native_dropout:
        noise = []
        for i, p in enumerate(backend.model.dropouts):
            draw_keep(backend.rng, ws.keep[i], p)
            noise.append((NATIVE_KEEP, backend.dtype(0.0 if p >= 1 else 1.0 / (1.0 - p))))
        return noise
    return backend._noise_terms(masks if masks is not None else backend._draw(len(ws.ones)))


def _bound_gemms(ws: Workspace, x: np.ndarray, kernels: tuple, lr: float, decay_beta: float) -> dict:
    """The step's products bound to this batch, the kernels and the workspace's buffers (``numpy_blas.bind``), made
    again when any of them is another array than last time: ("forward", i), ("input grad", i) for i > 0 and
    ("update", i), the same calls ``step`` would make with ``numpy_blas.gemm``."""
    key = (x.ctypes.data, x.shape, x.strides, *map(id, kernels), lr, decay_beta)
    if ws.bound_key == key:
        return ws.bound
    layers = len(kernels)
    inputs = [x, *ws.h]
    grads = [*ws.dh, ws.probs_t.T]  # dLoss/dZ of each layer, (batch, out)
    bound = {("forward", i): numpy_blas.bind(1.0, inputs[i], kernels[i], 1.0, ws.z[i]) for i in range(layers - 1)}
    bound["forward", layers - 1] = numpy_blas.bind(1.0, kernels[-1].T, inputs[-1].T, 1.0, ws.logits_t)
    for i in range(layers):
        if i > 0:  # with the kernel before this step's update
            bound["input grad", i] = numpy_blas.bind(1.0, grads[i], kernels[i].T, 0.0, ws.dh[i - 1])
        bound["update", i] = numpy_blas.bind(-lr, inputs[i].T, grads[i], decay_beta, kernels[i])
    ws.bound_key, ws.bound_arrays, ws.bound = key, (x, kernels), bound
    return bound


def step(backend, ws: Workspace, x: np.ndarray, y: np.ndarray, masks, *, native_dropout: bool) -> tuple[float, int]:
    """One SGD step of ``backend`` (a float32 ``numpy_ref.Backend``) on a batch: (mean loss, correct count).
    ``native_dropout``: draw dropout's keep masks from the backend's stream here (masks is None, noise dropout, and
    the backend's ``_noise_terms`` is the reference's own)."""
    params, dtype, layers = backend.params, backend.dtype, backend.num_layers
    lr = float(backend.train.lr)
    decay_beta = 1.0 - lr * float(backend.train.weight_decay)
    noise = _layer_noise(backend, ws, masks, native_dropout)
    gemms = _bound_gemms(ws, x, tuple(params[f"dense_{i}/kernel"] for i in range(layers)), lr, decay_beta)
    for i in range(layers - 1):
        z = ws.z[i]
        z[...] = params[f"dense_{i}/bias"]
        gemms["forward", i]()
        positive, multiplier = ws.positive[i], ws.multiplier[i]
        np.greater(z, 0, out=positive)
        factor, offset = noise[i]
        if factor is NATIVE_KEEP:  # keep & [z > 0], times the scale 1/(1-p) that came in the offset's place
            scale, offset = offset, 0.0
            np.logical_and(ws.keep[i], positive, out=positive)
            np.multiply(positive, scale, out=multiplier)
        else:
            np.multiply(positive, factor, out=multiplier)
        h = ws.h[i]
        np.multiply(z, multiplier, out=h)
        if not (np.isscalar(offset) and offset == 0):
            h += offset

    logits = ws.logits_t
    logits[...] = params[f"dense_{layers - 1}/bias"][:, None]
    gemms["forward", layers - 1]()
    columns = ws.columns[:len(y)]
    correct = int(np.count_nonzero(logits.argmax(axis=0) == y))
    logits -= logits.max(axis=0)
    probs = ws.probs_t
    np.exp(logits, out=probs)
    total = probs.sum(axis=0)
    loss = float(np.log(total).sum() - logits[y, columns].sum()) / len(y)
    probs /= total
    probs[y, columns] -= 1.0
    probs *= dtype(1.0 / len(y))
    grad = probs.T  # dLoss/dlogits, (batch, classes)

    for i in reversed(range(layers)):
        bias_grad = ws.bias_grad[i]
        np.matmul(ws.ones, grad, out=bias_grad)
        bias_grad *= dtype(lr)
        params[f"dense_{i}/bias"] -= bias_grad
        upstream = None
        if i > 0:
            upstream = ws.dh[i - 1]
            gemms["input grad", i]()  # with the kernel before this step's update
            upstream *= ws.multiplier[i - 1]
        gemms["update", i]()
        grad = upstream
    return loss, correct

