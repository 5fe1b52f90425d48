"""The bench's instrumentation of a built JAX backend, by tier and mode: which GEMM library XLA runs, the step's
products through JAX, and the concise model's dropout noise alone. Both modes jit their steps, so each probe is one
jitted program in both; what differs is the tier: the tuned tier on the CPU takes a kernel gradient through
``tuned._kernel_gradient`` and draws its dropout with ``tuned.BitDropout`` in the older threefry layout, the stock tier
runs XLA's own dots and Flax's ``nn.Dropout``."""
from __future__ import annotations

import contextlib

from backends.jax import tuned  # first: it bounds XLA's threads before jax is imported

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from backends import contract  # noqa: E402


def _tuned_on_cpu(backend) -> bool:
    return isinstance(backend, tuned.Backend) and backend.device.platform == "cpu"


def gemm_library(backend, *, m: int, k: int, n: int) -> str | None:
    """The GEMM library this backend's float32 matmul runs in this mode for an m x k @ k x n product, as the
    framework tells it (for the bench's start event). XLA:CPU names its library in the compiled HLO of the dot: a
    ``__ynn_fusion``/``__xnn_fusion`` (YNNPACK/XNNPACK), a oneDNN custom call, or neither (its own Eigen dot); on a
    GPU, a cuBLAS custom call."""
    a, b = backend._put(np.ones((m, k)), np.float32), backend._put(np.ones((k, n)), np.float32)
    return contract.xla_gemm_library(jax.jit(jnp.dot).lower(a, b).compile().as_text())


def gemm_step_probe(backend, *, products, rounds: int = 1):
    """A callable that computes every product of ``products`` through this backend's float32 matmul, in this mode,
    ``rounds`` times over, one round after another, and returns once they are done. Each product is a mapping with
    ``m``, ``k``, ``n`` (an m x k @ k x n product) and ``ta``/``tb`` (that operand is the transpose of the array the
    framework holds, as in the training step); the callable returns the last round's m x n results, in order, as
    JAX arrays. The operands are made once, outside the callable. For the bench: the step's necessary GEMMs through
    JAX, beside the floor's through NumPy's BLAS; the bench divides by ``rounds``.

    The rounds are one jitted ``fori_loop`` (XLA folds each transpose into its dot's dimension numbers, as in the
    training step; in the tuned tier on the CPU a kernel gradient goes through ``tuned._kernel_gradient``, as that
    tier's step's does). Each product's operands pass an ``optimization_barrier`` together with the product before
    it: the dots run one after another, as the step's chain does, instead of side by side on the pool's threads, and
    none is loop-invariant, so none is hoisted out of the loop. The results stay in the loop's carry, so no round
    allocates its outputs."""
    rng = np.random.default_rng(0)
    flags = [(bool(p["ta"]), bool(p["tb"])) for p in products]
    operands = [tuple(backend._put(rng.standard_normal(shape), np.float32)
                      for shape in contract.held_operand_shapes(p)) for p in products]
    zeros = [backend._put(np.zeros((p["m"], p["n"])), np.float32) for p in products]
    custom_gradient = _tuned_on_cpu(backend)

    def product(a, b, ta, tb):
        if custom_gradient and ta and not tb:  # X^T dZ, a kernel gradient: as the tuned CPU step takes it
            return tuned._kernel_gradient(a, b)
        return (a.T if ta else a) @ (b.T if tb else b)

    def one_round(_, carry):
        pairs, results = carry
        previous, kept, fresh = results[-1], [], []
        for (a, b), (ta, tb) in zip(pairs, flags):
            previous, a, b = jax.lax.optimization_barrier((previous, a, b))
            previous = product(a, b, ta, tb)
            kept.append((a, b))
            fresh.append(previous)
        return kept, fresh

    @jax.jit
    def gemms(pairs, results):
        return jax.lax.fori_loop(0, rounds, one_round, (pairs, results))[1]
    return lambda: jax.block_until_ready(gemms(operands, zeros))


def noise_probe(backend, *, batch_size: int):
    """(what draws it, a callable): one training step's dropout noise made alone, the way this backend's ``concise``
    training step makes it (every hidden layer's mask drawn and applied to a (batch, width) array), on a key of its
    own so that the backend's stream does not move; the callable returns once the work is done. For the bench's start
    event, which sets it beside the noise's measured cost.

    The concise model's dropout layer (Flax's ``nn.Dropout``; in the tuned tier on the CPU ``BitDropout``, in that
    tier's threefry layout) on every hidden layer's (batch, width) array, jitted alone (threefry bits, a compare, a
    select). Inside the training step XLA fuses the same work into the step's other kernels, where it can cost less
    than alone."""
    rates = [p for p in backend.model.dropouts if 0 < p < 1]
    ones = [backend._put(np.ones((batch_size, w)), np.float32)
            for w, p in zip(backend.model.hiddens, backend.model.dropouts) if 0 < p < 1]
    layer = tuned.BitDropout if _tuned_on_cpu(backend) else nn.Dropout
    layout = tuned.threefry_layout if isinstance(backend, tuned.Backend) else contextlib.nullcontext

    @jax.jit
    def dropouts(key, arrays):
        keys = jax.random.split(key, len(arrays))
        return [layer(p, deterministic=False).apply({}, x, rngs={"dropout": k})
                for p, x, k in zip(rates, arrays, keys)]
    counter = iter(range(1 << 62))
    base = jax.random.PRNGKey(0)

    def draw():
        with layout():
            return jax.block_until_ready(dropouts(jax.random.fold_in(base, next(counter)), ones))
    if layer is tuned.BitDropout:
        how = f"nn.Dropout, {contract.mask_draw_kinds(rates, 'threefry', 'threefry uniform < 1-p')}"
    else:
        how = "nn.Dropout (threefry)"
    return f"{how}, jitted alone", draw
