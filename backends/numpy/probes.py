"""The bench's instrumentation of a built NumPy backend, either tier: what its float32 matrix products run in
(``gemm_library``), the step's products through them (``gemm_step_probe``) and one step's dropout draw alone
(``noise_probe``). The stock tier multiplies with ``numpy.matmul`` (NumPy's BLAS) and draws ``uniform > p``; the
tuned tier calls the CBLAS sgemm of NumPy's own BLAS directly (``tuned.gemm``) and draws bit masks (``tuned.draw_keep``)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from backends import contract
from backends.numpy import model, tuned


def _numpy_blas() -> str:
    """The BLAS NumPy calls, as threadpoolctl names it."""
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        library = ", ".join(f"{p['internal_api']} {p['version']} ({p.get('architecture')})" for p in pools)
    except ImportError:
        library = "NumPy's BLAS (threadpoolctl not installed to name it)"
    return library or "NumPy's BLAS"


def _direct(backend) -> bool:
    """Whether ``backend`` multiplies through the direct CBLAS calls (the tuned tier, where the symbol is found)."""
    return isinstance(backend, tuned.Backend) and tuned.blas_library(backend.dtype) is not None


def gemm_library(backend, *, m: int, k: int, n: int) -> str | None:
    """The GEMM library this backend's float32 matmul runs in this mode for an m x k @ k x n product, as the
    framework tells it (for the bench's start event); None where the backend does not say. Here: NumPy's BLAS,
    whatever the shape; for the tuned tier, with the CBLAS symbol it calls."""
    if _direct(backend):
        return f"{_numpy_blas()} by {tuned.blas_library(backend.dtype)} (ctypes)"
    return f"{_numpy_blas()} by numpy.matmul"


def gemm_step_probe(backend, *, products: Sequence[Mapping[str, Any]], rounds: int = 1):
    """A callable that computes every product of ``products`` through this backend's float32 matmul, in this
    mode, ``rounds`` times over, one round after another, and returns once they are done; None where the
    backend does not say. Each product is a mapping with ``m``, ``k``, ``n`` (an m x k @ k x n product) and
    ``ta``/``tb`` (that operand is the transpose of the array the framework holds, as in the training step);
    the callable returns the last round's m x n results, in order, as the framework's arrays. The operands are
    made once, outside the callable. For the bench: the step's necessary GEMMs through the framework (and the first
    layer's forward product alone), beside the floor's through NumPy's BLAS; the bench divides by ``rounds``.

    Here transposed operands are transposed views; the stock tier calls ``numpy.matmul`` into kept outputs, the
    tuned tier its CBLAS calls bound once (``tuned.bind``), as its fused step does."""
    rng = np.random.default_rng(0)
    operands = []
    for p in products:
        a, b = (rng.standard_normal(shape).astype(backend.dtype) for shape in contract.held_operand_shapes(p))
        operands.append((a.T if p["ta"] else a, b.T if p["tb"] else b, np.empty((p["m"], p["n"]), backend.dtype)))
    if _direct(backend):
        bound = [tuned.bind(1.0, a, b, 0.0, c) for a, b, c in operands]

        def run_bound():
            for _ in range(rounds):
                for call in bound:
                    call()
            return [c for _, _, c in operands]
        return run_bound

    def run():
        for _ in range(rounds):
            for a, b, c in operands:
                np.matmul(a, b, out=c)
        return [c for _, _, c in operands]
    return run


def noise_probe(backend, *, batch_size: int):
    """(what draws it, a callable): one training step's dropout noise made alone, the way this backend's
    ``concise`` training step makes it (every hidden layer's mask drawn and applied to a (batch, width) array,
    in this mode), on a generator of its own so that the backend's stream does not move; the callable returns
    once the work is done. For the bench's start event, which sets it beside the noise's measured cost. None
    where the backend does not say.

    The stock tier draws ``model.draw_noise``'s float32 uniforms and applies ``model.dropout_layer``; the tuned
    tier's fused step draws ``tuned.draw_keep``'s masks into kept buffers and multiplies by ``keep / (1 - p)``."""
    rng = np.random.default_rng(0)
    dtype = backend.dtype
    if not isinstance(backend, tuned.Backend):
        ones = [np.ones((batch_size, width), dtype) for width in backend.model.hiddens]

        def draw_uniform():
            keeps = model.draw_noise(backend.model, batch_size, rng)
            for x, keep, p in zip(ones, keeps, backend.model.dropouts):
                model.dropout_layer(x, p, keep)
        return "PCG64 float32 uniforms > p (NumPy Generator.random)", draw_uniform
    arrays = [(np.ones((batch_size, w), dtype), np.empty((batch_size, w), bool), np.empty((batch_size, w), dtype), p)
              for w, p in zip(backend.model.hiddens, backend.model.dropouts)]

    def draw_bits():
        for x, keep, multiplier, p in arrays:
            tuned.draw_keep(rng, keep, p)
            np.multiply(keep, dtype(contract.keep_scale(p)), out=multiplier)
            np.multiply(x, multiplier, out=multiplier)
    kinds = contract.mask_draw_kinds(backend.model.dropouts, "PCG64", "PCG64 raw words vs an integer threshold")
    return f"{kinds} (NumPy)", draw_bits
