"""The JAX backend, tuned tier: the stock backend (``backend``) with same-law speed paths in place of some of its
stock parts. Every path below computes the same maths, or draws noise of exactly the same law, as the stock part it
replaces; the bench measures what each one saves.

- ``BitDropout`` (CPU, concise): Flax's ``nn.Dropout`` with its keep mask from a few threefry bits an element.
- ``cpu_dense_dot_general`` (CPU): every Dense product, with the narrow layer's kernel gradient as a plain dot.
- The gathered epoch: the training split copied to the device once, batches gathered there, metrics summed there.
- Donated buffers: the parameters, optimiser state and accumulators of a step are updated in place.
- The older threefry layout, for every draw of this tier.
"""
from __future__ import annotations

import contextlib
import functools
import os

from backends.jax.backend import Backend as StockBackend  # first: it bounds XLA's threads before jax is imported

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from backends import contract  # noqa: E402
from backends.contract import EVAL_CHUNK, EpochBatches, EpochMetrics, EvalMetrics  # noqa: E402


# --- the threefry layout ----------------------------------------------------------------------------------------------
def threefry_layout():
    """Replaces JAX's default "partitionable" threefry layout, which hashes one counter pair for every 32-bit output so
    that an array's bits do not depend on how it is sharded, by the older layout, which hashes one pair for two
    outputs: the same law with half the hashing, and on one device nothing is sharded. Scoped to this tier's calls
    (the flag is part of jit's trace context), so that a stock backend in the same process keeps JAX's default; a
    user's ``JAX_THREEFRY_PARTITIONABLE`` stands."""
    if "JAX_THREEFRY_PARTITIONABLE" in os.environ:
        return contextlib.nullcontext()
    return jax.threefry_partitionable(False)


def _in_threefry_layout(method):
    @functools.wraps(method)
    def wrapper(self, **kwargs):
        with threefry_layout():
            return method(self, **kwargs)
    return wrapper


# --- dropout masks from bits ------------------------------------------------------------------------------------------
def keep_mask(key, q: float, shape) -> jax.Array:
    """A bool keep mask of ``shape``, each element kept with probability q, from ``key``: b threefry bits an element
    compared with j where ``contract.dyadic_keep(q)`` gives (b, j) (D2L's dropout 0.5: one bit), else Flax's own
    ``random.bernoulli`` (a float32 uniform below q). Both have exactly the law of ``uniform < q``."""
    dyadic = contract.dyadic_keep(q)
    if dyadic is None:
        return jax.random.bernoulli(key, q, shape)
    bits, below = dyadic
    count = int(np.prod(shape))
    words = jax.random.bits(key, (-(-count // (32 // bits)),), jnp.uint32)
    fields = (words[:, None] >> jnp.arange(0, 32, bits, dtype=jnp.uint32)) & jnp.uint32((1 << bits) - 1)
    return (fields.reshape(-1)[:count] < below).reshape(shape)


class BitDropout(nn.Dropout):
    """Replaces Flax's ``nn.Dropout`` in the concise model on the CPU, where drawing a 32-bit uniform per element
    dominates the layer: at a keep probability j / 2**b the mask comes from ``keep_mask``, b threefry bits an element
    (1/32 of the random words at dropout 0.5), the same Bernoulli law exactly, from the same key (``make_rng`` of the
    layer's collection); the scaling, the p = 0 and p = 1 cases and every other rate are Flax's own. The masks differ
    from stock Flax's, the law does not."""

    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        keep = 1.0 - self.rate
        if (nn.merge_param("deterministic", self.deterministic, deterministic) or self.broadcast_dims
                or contract.dyadic_keep(keep) is None):
            return super().__call__(inputs, deterministic, rng)
        mask = keep_mask(self.make_rng(self.rng_collection) if rng is None else rng, keep, inputs.shape)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


# --- the Dense product on the CPU -------------------------------------------------------------------------------------
_NARROW_GRADIENT = 64  # the widest layer output whose kernel gradient goes the transposed way


def _kernel_gradient(x, dz):
    """X^T dZ, a Dense layer's kernel gradient (in x out). XLA:CPU gives this dot, which contracts the batch
    dimension of both operands, to its Eigen kernel (YNNPACK takes no transposed left operand), which is slow when
    the layer's output is narrow. For an output of at most 64 columns the same product is taken as (dZ^T X)^T, with
    dZ^T and the (out x in) product materialised by optimisation barriers (both small there), so that the product
    is YNNPACK's plain dot; wider layers keep the one Eigen dot, which suits them better."""
    if dz.shape[-1] > _NARROW_GRADIENT:
        return x.T @ dz
    barrier = jax.lax.optimization_barrier
    return barrier(barrier(dz.T) @ x).T


@jax.custom_vjp
def _dense_product(x, kernel):
    return x @ kernel


def _dense_product_forward(x, kernel):
    return x @ kernel, (x, kernel)


def _dense_product_backward(residuals, dz):
    x, kernel = residuals
    return dz @ kernel.T, _kernel_gradient(x, dz)  # an input gradient nothing reads (the images') is dead code to XLA


_dense_product.defvjp(_dense_product_forward, _dense_product_backward)


def cpu_dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """Replaces Flax Dense's ``lax.dot_general`` on the CPU, so that the kernel gradient of the narrow last layer is
    a plain dot XLA:CPU hands to YNNPACK rather than a transposed-operand dot on Eigen: the (batch, in) @ (in, out)
    product with ``_kernel_gradient`` as the kernel's gradient (a ``custom_vjp``); any other product as
    ``lax.dot_general``."""
    if (lhs.ndim == 2 and tuple(map(tuple, dimension_numbers[0])) == ((1,), (0,)) and dimension_numbers[1] == ((), ())
            and precision is None and preferred_element_type is None):
        return _dense_product(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)


# --- the tier ---------------------------------------------------------------------------------------------------------
class Backend(StockBackend):
    """The stock backend with the paths of the module doc; on a GPU the model is stock Flax.

    Donated buffers replace the stock steps' fresh output buffers for the parameters, the optimiser state and the
    epoch's accumulators: every jitted training step donates them, so XLA writes the step's results over inputs that
    nothing reads afterwards instead of allocating new ones at every step."""

    def __init__(self, *, model, train, threads=None) -> None:
        super().__init__(model=model, train=train, threads=threads)
        self._cache: dict[int, tuple[np.ndarray, jax.Array]] = {}
        self._jit_step = jax.jit(self._step_fn, donate_argnums=(0, 1))
        self._jit_eager_step = jax.jit(self._eager_step_fn, donate_argnums=(0, 1, 2))
        self._jit_tail_step = jax.jit(self._tail_step_fn, donate_argnums=(0, 1, 2))
        self._jit_scan_epoch = jax.jit(self._gathered_scan_fn, donate_argnums=(0, 1, 2))

    def make_net(self, **options):
        """On the CPU, the section's model with ``cpu_dense_dot_general`` as every Dense's product and, for the
        concise model, ``BitDropout`` as its dropout layer; on a GPU the stock model."""
        if self.device.platform == "cpu":
            options.setdefault("dot_general", cpu_dense_dot_general)
            if self.model.impl == "concise":
                options.setdefault("dropout_module", BitDropout)
        return super().make_net(**options)

    build = _in_threefry_layout(StockBackend.build)
    forward = _in_threefry_layout(StockBackend.forward)
    activations = _in_threefry_layout(StockBackend.activations)
    loss_and_grads = _in_threefry_layout(StockBackend.loss_and_grads)
    train_step = _in_threefry_layout(StockBackend.train_step)

    def _on_device(self, array: np.ndarray, *, cache: bool = True) -> jax.Array:
        """A device copy of an array the caller passes again and again (the training split, the test split), cached
        per ``id(array)`` (at most four, oldest out first); ``cache=False`` just copies."""
        if not cache or not isinstance(array, np.ndarray):
            return self._put(array, np.asarray(array).dtype)
        hit = self._cache.get(id(array))
        if hit is not None and hit[0] is array:
            return hit[1]
        if len(self._cache) >= 4:
            self._cache.pop(next(iter(self._cache)))
        copy = self._put(array, array.dtype)
        self._cache[id(array)] = (array, copy)  # holding the array keeps its id from being reused
        return copy

    # --- the gathered epoch ---------------------------------------------------------------------------------------
    def _gather_step(self, params, opt_state, totals, x_all, y_all, idx, base_key, n):
        """One native-noise training step on the batch x_all[idx]; totals += (loss sum, correct)."""
        xb = jnp.take(x_all, idx, axis=0, mode="clip")
        yb = jnp.take(y_all, idx, axis=0, mode="clip")
        params, opt_state, loss, correct = self._update(params, opt_state, xb, yb, self._step_key(base_key, n), None)
        totals = totals + jnp.stack([loss * idx.shape[0], correct.astype(jnp.float32)])
        return params, opt_state, totals, loss

    def _eager_step_fn(self, params, opt_state, totals, x_all, y_all, idx_matrix, t, base_key, n0):
        self.trace_counts["eager_step"] += 1
        return self._gather_step(params, opt_state, totals, x_all, y_all, idx_matrix[t], base_key, n0 + t)

    def _tail_step_fn(self, params, opt_state, totals, x_all, y_all, idx, base_key, n):
        self.trace_counts["tail_step"] += 1
        return self._gather_step(params, opt_state, totals, x_all, y_all, idx, base_key, n)

    def _gathered_scan_fn(self, params, opt_state, totals, x_all, y_all, idx_matrix, base_key, n0):
        self.trace_counts["scan_epoch"] += 1

        def body(carry, inputs):
            t, idx = inputs
            params, opt_state, totals = carry
            params, opt_state, totals, loss = self._gather_step(params, opt_state, totals, x_all, y_all, idx,
                                                                base_key, n0 + t)
            return (params, opt_state, totals), loss

        steps = jnp.arange(idx_matrix.shape[0], dtype=jnp.int32)
        (params, opt_state, totals), losses = jax.lax.scan(body, (params, opt_state, totals), (steps, idx_matrix))
        return params, opt_state, totals, losses

    @_in_threefry_layout
    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        """Replaces the stock epoch's host batches (a gather and a transfer per batch, or of the whole stacked epoch
        for ``compiled``) and its per-step metric reads: the training split is copied to the device once (cached per
        ``id(batches.x)``) and each step gathers its batch there from the epoch's order; loss and accuracy are summed
        on the device and read back once per epoch. ``eager`` runs one jitted step per batch, ``compiled`` the full
        batches as one ``lax.scan``, and the last partial batch is one extra jitted step."""
        x_all, y_all = self._on_device(batches.x), self._on_device(batches.y)
        order = np.asarray(batches.order, dtype=np.int32)
        size = batches.batch_size
        full = len(order) // size
        totals = jax.device_put(np.zeros(2, np.float32), self.device)
        n0 = self.draws
        self._step_losses = []
        if full:
            idx_matrix = self._put(order[:full * size].reshape(full, size), np.int32)
            if self.train.mode == "compiled":
                self.params, self.opt_state, totals, losses = self._jit_scan_epoch(
                    self.params, self.opt_state, totals, x_all, y_all, idx_matrix, self.base_key, n0)
                self._step_losses.append(losses)
            else:
                for t in range(full):
                    self.params, self.opt_state, totals, loss = self._jit_eager_step(
                        self.params, self.opt_state, totals, x_all, y_all, idx_matrix, t, self.base_key, n0)
                    self._step_losses.append(loss)
        if len(order) > full * size:  # the last, partial batch: another shape, so its own jitted step
            self.params, self.opt_state, totals, loss = self._jit_tail_step(
                self.params, self.opt_state, totals, x_all, y_all, self._put(order[full * size:], np.int32),
                self.base_key, n0 + full)
            self._step_losses.append(loss)
        self.draws = n0 + len(batches)
        loss_sum, correct = np.asarray(totals, dtype=np.float64)  # the one host read of the epoch
        return EpochMetrics(loss=float(loss_sum) / len(order), acc=float(correct) / len(order))

    def evaluate(self, *, x, y) -> EvalMetrics:
        """Replaces the stock evaluation's transfer of the split at every call: the worker evaluates the same test
        split every epoch, so arrays that own their memory are kept on the device (``_on_device``), but not views
        such as a probe's ``train_x[:n]``, which are new objects at every call (caching them would only pile up
        copies)."""
        x_dev = self._on_device(x, cache=isinstance(x, np.ndarray) and x.base is None)
        y_dev = self._on_device(y, cache=isinstance(y, np.ndarray) and y.base is None)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), EVAL_CHUNK):
            whole = start == 0 and len(x) <= EVAL_CHUNK  # the usual case: no slicing op at all
            chunk_loss, chunk_correct = self._jit_evaluate(
                self.params, x_dev if whole else x_dev[start:start + EVAL_CHUNK],
                y_dev if whole else y_dev[start:start + EVAL_CHUNK])
            loss_sum += float(chunk_loss)
            correct += int(chunk_correct)
        return EvalMetrics(loss=loss_sum / len(x), acc=correct / len(x))
