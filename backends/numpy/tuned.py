"""The NumPy backend, tuned tier: the stock tier's model, loss, SGD update and noise law, computed along faster
paths. Each path, what it replaces and why:

The fused step (``fused_step``) replaces the stock step's fresh arrays (forward, loss, backward, ``sgd``) for every
noise kind but dropconnect (which keeps the stock step): every array of the step is a buffer kept per batch size
(``Workspace``) and written with ``out=``, so that a step allocates nothing and touches no fresh pages. ReLU and the noise become one multiplier per hidden layer, ``dm = [z > 0] * mult``: the forward pass
is ``h = z * dm + offset``, written over ``z`` (nothing reads ``z`` afterwards, and a product written over one of its
operands skips the write-allocate reads of a third buffer), and the backward pass ``dh * dm``. ``z * dm`` equals
``ReLU(z) * mult`` but for the sign of a zero, and for a ``z`` of -inf (only weights or inputs that have already
overflowed give one), which becomes NaN instead of 0. The logits are computed transposed, (classes, batch), so that
the softmax reduces along contiguous rows.

The direct CBLAS calls (``gemm``, ``bind``, bound in ``_bound_gemms``) replace ``matmul`` and the update pass of ``sgd``: the
bias is the forward GEMM's ``beta = 1`` start value, and the SGD update ``W <- (1 - lr*wd) W - lr X^T dZ`` is the
kernel-gradient GEMM itself, so that no pass of the main thread reads back what the BLAS threads wrote. Each input
gradient is taken before its kernel is updated, as the stock step does. The step's products are CBLAS calls bound
once to the batch buffer, the kernels and the workspace (made again when one of those arrays is another one), so that
a call skips the wrapper's checks and ``.ctypes`` lookups.

The bit masks (``_draw``, ``draw_keep``) replace the section's float32 uniforms for the backend's own dropout and
dropconnect masks, with the same law: at a keep probability j / 2**b (D2L's 0.5: one bit) ``contract.draw_keep``'s
b-bit fields of PCG64's raw outputs, kept when at least 2**b - j, which is exactly probability 1 - p from 32 / b
times fewer random words; at any other rate the 32-bit words that ``Generator.random(dtype=float32)`` reads, compared
with an integer threshold (``keep_threshold``) instead of converted to floats. Injected masks are ``draw_masks``'
``uniform > p``, as in the stock tier.

The byte gather (``byte_images``, ``gather_rows``) replaces the stock epoch's fancy indexing of float rows: where the
training split is exactly ``uint8 / 255`` in float32 (checked bit for bit, once per split), a batch is taken from a
uint8 copy into a kept buffer and divided by 255 in float32, which gives the same floats from a quarter of the bytes.

The in-place activations (``InPlaceMLP``) replace the stock forward pass's fresh arrays where the fused step does
not run: the bias is added to the product and the ReLU written over it, the same operations in the same order.
Rounding differs from the stock step at the last bit; the parity ladder holds this tier to the oracle like the stock.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import Callable

import numpy as np

from backends import contract
from backends.numpy import backend, model

_WORD_BITS = 24  # Generator.random(dtype=float32) keeps the top 24 bits of each 32-bit word


class InPlaceMLP(model.DropoutMLPScratch):
    """``model.DropoutMLPScratch`` with each hidden layer's bias and ReLU applied in place over the fresh product."""

    def forward(self, X, noise=None, tape=None):
        H = X.reshape(len(X), -1)
        for i in range(self.num_layers):
            W = self.kernel(i, noise)
            Z = H @ W
            Z += self.params[f"dense_{i}/bias"]
            if tape is not None:
                tape.inputs.append(H), tape.kernels.append(W)
            if i == self.num_layers - 1:
                return Z
            if tape is not None and tape.keep_pre:
                tape.pre.append(Z.copy())
            A = np.maximum(Z, 0, out=Z)
            H = A if noise is None else model.apply_noise(self.kind, A, self.dropouts[i], noise[i])
            if tape is not None:
                tape.relu.append(A)
        raise AssertionError("the model has an output layer")


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


def draw_keep(rng: np.random.Generator, keep: np.ndarray, p: float) -> None:
    """``contract.draw_keep(rng, keep.shape, p)`` written into ``keep``: the same bit fields at a dyadic keep
    probability, else the float32 uniforms' own 32-bit words against ``keep_threshold``."""
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


def byte_images(x: np.ndarray) -> np.ndarray | None:
    """``x`` as uint8 where it is exactly ``uint8 / 255`` in float32, bit for bit (the harness's images are), else
    None. A batch taken from these bytes and divided by 255 in float32 is the same rows of ``x``; any other data (a
    value off the grid, NaN, -0.0, another dtype) keeps the float gather."""
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
    not None. mode="clip" skips the bounds check of "raise": the rows come from the epoch's own order."""
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


NATIVE_KEEP = "keep"  # in ``_layer_noise``'s terms: native dropout, whose keep mask is in ``ws.keep``


def noise_terms(model_spec, noise, dtype) -> list[tuple]:
    """Per hidden layer (multiplier, offset) so that the noisy activation is ``relu * multiplier + offset``: the
    stock tier's ``model.apply_noise`` for the draws ``noise`` (in ``dtype``), as the fused step applies it."""
    terms = []
    for draw, p in zip(noise, model_spec.dropouts):
        if model_spec.noise == "dropout":
            terms.append((draw * dtype(contract.keep_scale(p)), 0.0))
        elif model_spec.noise == "gaussian":
            terms.append((1.0 + dtype(contract.gaussian_noise_scale(p)) * draw, 0.0))
        else:  # additive
            terms.append((1.0, dtype(contract.additive_noise_scale(p)) * draw))
    return terms


def _layer_noise(backend_, ws: Workspace, masks) -> list[tuple]:
    """Per hidden layer (multiplier of ``[z > 0]``, offset added after): ``noise_terms`` of the injected masks (or
    of the backend's own Gaussian draws), or for the backend's own dropout (NATIVE_KEEP, 1/(1-p)) with the keep mask
    drawn into ``ws.keep``."""
    if masks is None and backend_.model.noise == "dropout":
        noise = []
        for i, p in enumerate(backend_.model.dropouts):
            draw_keep(backend_.rng, ws.keep[i], p)
            noise.append((NATIVE_KEEP, backend_.dtype(contract.keep_scale(p))))
        return noise
    return noise_terms(backend_.model, backend_._noise(len(ws.ones), masks), backend_.dtype)


def _bound_gemms(ws: Workspace, x: np.ndarray, kernels: tuple, lr: float, decay_beta: float) -> dict:
    """The step's products bound to this batch, the kernels and the workspace's buffers (``bind``), made again
    when any of them is another array than last time: ("forward", i), ("input grad", i) for i > 0 and ("update", i),
    the same calls ``fused_step`` would make with ``gemm``."""
    key = (x.ctypes.data, x.shape, x.strides, *map(id, kernels), lr, decay_beta)
    if ws.bound_key == key:
        return ws.bound
    layers = len(kernels)
    inputs = [x, *ws.h]
    grads = [*ws.dh, ws.probs_t.T]  # dLoss/dZ of each layer, (batch, out)
    bound = {("forward", i): bind(1.0, inputs[i], kernels[i], 1.0, ws.z[i]) for i in range(layers - 1)}
    bound["forward", layers - 1] = bind(1.0, kernels[-1].T, inputs[-1].T, 1.0, ws.logits_t)
    for i in range(layers):
        if i > 0:  # with the kernel before this step's update
            bound["input grad", i] = bind(1.0, grads[i], kernels[i].T, 0.0, ws.dh[i - 1])
        bound["update", i] = bind(-lr, inputs[i].T, grads[i], decay_beta, kernels[i])
    ws.bound_key, ws.bound_arrays, ws.bound = key, (x, kernels), bound
    return bound


def fused_step(backend_: "Backend", ws: Workspace, x: np.ndarray, y: np.ndarray, masks) -> tuple[float, int]:
    """One SGD step of a float32 tuned ``Backend`` on a batch: (mean loss, correct count), the stock step's."""
    params, dtype, layers = backend_.params, backend_.dtype, backend_.net.num_layers
    lr = float(backend_.train.lr)
    decay_beta = 1.0 - lr * float(backend_.train.weight_decay)
    noise = _layer_noise(backend_, ws, masks)
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


class Backend(backend.Backend):
    """The tuned tier: ``fused_step`` for training (dropconnect keeps the stock step), bit masks for the backend's
    own dropout and dropconnect, the byte gather, ``InPlaceMLP`` elsewhere."""

    def build(self, *, seed, params=None) -> None:
        super().build(seed=seed, params=params)
        self._workspaces: dict[int, Workspace] = {}
        self._byte_split: tuple | None = None  # (training split, its bytes or None): see _byte_images

    def _network(self, params):
        return InPlaceMLP(self.model, params)

    def _draw(self, batch_size: int) -> list[np.ndarray]:
        """Keep masks from ``contract.draw_keep`` (bit fields at a dyadic keep probability), Gaussian draws as the
        stock tier's."""
        if self.model.noise not in ("dropout", "dropconnect"):
            return super()._draw(batch_size)
        return [contract.draw_keep(self.rng, shape, p).astype(np.float32)
                for shape, p in zip(contract.noise_shapes(self.model, batch_size), self.model.dropouts)]

    def _step(self, x, y, masks) -> tuple[float, int]:
        if self.model.noise == "dropconnect":
            return super()._step(x, y, masks)
        x = np.ascontiguousarray(x, dtype=self.dtype).reshape(len(x), -1)
        workspace = self._workspaces.get(len(x))
        if workspace is None:
            workspace = self._workspaces[len(x)] = Workspace(self.model.layer_sizes, len(x), self.dtype)
        return fused_step(self, workspace, x, np.asarray(y), masks)

    def train_epoch(self, *, batches: contract.EpochBatches) -> contract.EpochMetrics:
        total_loss, total_correct = 0.0, 0
        # Each batch is gathered into one kept buffer, as the framework backends gather on their side from ``order``.
        buffer = np.empty((batches.batch_size, batches.x.shape[1]), dtype=batches.x.dtype)
        byte_buffer = np.empty(buffer.shape, np.uint8)
        images = self._byte_images(batches.x)
        for idx in batches.indices():
            xb = gather_rows(batches.x, images, idx, buffer, byte_buffer)
            yb = batches.y[idx]
            loss, correct = self._step(xb, yb, None)
            total_loss += loss * len(yb)
            total_correct += correct
        n = len(batches.order)
        return contract.EpochMetrics(loss=total_loss / n, acc=total_correct / n)

    def _byte_images(self, x: np.ndarray) -> np.ndarray | None:
        """``byte_images`` of the training split, checked once per split (kept with the array it was made from,
        whose id would otherwise be reused)."""
        cached = self._byte_split
        if cached is None or cached[0] is not x:
            cached = self._byte_split = (x, byte_images(x) if isinstance(x, np.ndarray) else None)
        return cached[1]


# --- the direct CBLAS calls ---------------------------------------------------------------------------------------
# ``C <- alpha * A @ B + beta * C`` in place, through the BLAS of NumPy's own wheel (``numpy.libs``: one BLAS thread
# pool in the process). ``matmul`` always overwrites its output; ``beta`` lets the BLAS threads apply the bias or the
# SGD update where they compute the product. Operands: C-contiguous arrays or transposed views; else ``matmul``.
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol, integer type): NumPy >= 2 wheels ship scipy-openblas64 (64-bit integers, prefixed and suffixed names).
_SYMBOLS = {np.float32: (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64),
                         ("scipy_cblas_sgemm", ctypes.c_int32), ("cblas_sgemm", ctypes.c_int32)),
            np.float64: (("scipy_cblas_dgemm64_", ctypes.c_int64), ("cblas_dgemm64_", ctypes.c_int64),
                         ("scipy_cblas_dgemm", ctypes.c_int32), ("cblas_dgemm", ctypes.c_int32))}


@functools.lru_cache(maxsize=None)
def _cblas_gemm(dtype):
    """The CBLAS gemm of NumPy's own BLAS for ``dtype`` as (function, its name), or None."""
    scalar = ctypes.c_float if dtype is np.float32 else ctypes.c_double
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs", "*openblas*.so*")
    for path in sorted(glob.glob(libs)):
        for symbol, integer in _SYMBOLS[dtype]:
            function = getattr(ctypes.CDLL(path), symbol, None)
            if function is not None:
                function.restype = None
                pointer = [ctypes.c_void_p, integer]
                function.argtypes = [ctypes.c_int] * 3 + [integer] * 3 + [scalar, *pointer * 2, scalar, *pointer]
                return function, f"{os.path.basename(path)}:{symbol}"
    return None


def blas_library(dtype=np.float32) -> str | None:
    """Which library and symbol ``gemm`` calls for ``dtype``; None when it falls back to ``matmul``."""
    found = _cblas_gemm(np.dtype(dtype).type)
    return found[1] if found else None


def _operand(a: np.ndarray) -> tuple[int, int]:
    """(transpose flag, leading dimension) of a C-contiguous array or of a transposed view of one."""
    if a.flags.c_contiguous or a.T.flags.c_contiguous:
        return (_NO_TRANS, a.shape[1]) if a.flags.c_contiguous else (_TRANS, a.shape[0])
    raise ValueError("gemm takes C-contiguous operands or transposed views of them")


def _cblas_arguments(alpha, a, b, beta, c) -> tuple | None:
    """The CBLAS call's function and arguments for ``c = alpha * a @ b + beta * c``; None without the library."""
    (m, k), n = a.shape, b.shape[1]
    if b.shape[0] != k or c.shape != (m, n) or not a.dtype == b.dtype == c.dtype:
        raise ValueError(f"gemm shapes or dtypes disagree: {a.shape} {a.dtype} @ {b.shape} {b.dtype} -> "
                         f"{c.shape} {c.dtype}")
    found = _cblas_gemm(c.dtype.type)
    if found is None or not c.flags.c_contiguous:
        return None
    (trans_a, lda), (trans_b, ldb) = _operand(a), _operand(b)
    return (found[0], _ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta,
            c.ctypes.data, n)


def gemm(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, c: np.ndarray, *, use_blas: bool = True) -> None:
    """``c = alpha * a @ b + beta * c``, in place; ``beta = 0`` ignores what ``c`` held."""
    call = _cblas_arguments(alpha, a, b, beta, c) if use_blas else None
    if call is not None:
        call[0](*call[1:])
        return
    product = a @ b
    if alpha != 1:
        product *= c.dtype.type(alpha)
    if beta != 0 and beta != 1:
        c *= c.dtype.type(beta)
    c[...] = product if beta == 0 else c + product


def bind(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, c: np.ndarray) -> Callable[[], None]:
    """``gemm(alpha, a, b, beta, c)`` with its arguments bound now (the arrays' addresses taken once, so that a call
    skips ``gemm``'s checks and ``.ctypes`` lookups); the arrays must stay alive and in place while it is used."""
    call = _cblas_arguments(alpha, a, b, beta, c)
    return functools.partial(*call) if call is not None else functools.partial(gemm, alpha, a, b, beta, c)
