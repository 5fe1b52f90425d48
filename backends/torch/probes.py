"""The bench's instrumentation of a built PyTorch backend, by tier and mode: which GEMM library its float32 products
run on (``gemm_library``), the step's products through it (``gemm_step_probe``) and one step's dropout noise made
alone (``noise_probe``).

- stock, both modes: ``aten::mm`` on the BLAS torch was built with (cuBLAS on CUDA); nn.Dropout's own draw: eager
  ``bernoulli_``, and in compiled mode the dropout of a default ``torch.compile`` graph (inductor's own random
  numbers, seeded from the default generator);
- tuned eager: the same products and ``bernoulli_``;
- tuned compiled on the CPU: the products through oneDNN (``dropbench::onednn_mm``) and the masks of
  ``tuned.keep_mask_like`` (random bits at a dyadic keep probability, else ``torch.rand``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from backends import contract
from backends.torch import tuned
from backends.torch.backend import Backend


def _tuned_compiled(backend: Backend) -> bool:
    return isinstance(backend, tuned.Backend) and backend.train.mode == "compiled"


def _onednn_products(backend: Backend) -> bool:
    """Whether the backend's step runs its products through ``onednn_mm`` (tuned, compiled, on the CPU)."""
    return _tuned_compiled(backend) and backend.device.type == "cpu" and tuned.ONEDNN_AVAILABLE


def gemm_library(backend: Backend, *, m: int, k: int, n: int) -> str | None:
    """The GEMM library this backend's float32 matmul runs in its tier and mode for an m x k @ k x n product, as the
    framework tells it (for the bench's start event). On the CPU ``aten::mm`` goes to the BLAS torch was built with
    (``BLAS_INFO``; a default ``torch.compile`` graph calls it too, as inductor's ``extern_kernels.mm``), and the
    tuned compiled step's products to oneDNN; on CUDA, cuBLAS."""
    if backend.device.type == "cuda":
        return "cuBLAS"
    if _onednn_products(backend):
        return tuned.ONEDNN_LIBRARY
    config = torch.__config__.show()
    blas = next((part.split("=", 1)[1] for part in config.replace(",", "\n").split() if
                 part.startswith("BLAS_INFO=")), "unknown")
    return f"{'MKL' if blas == 'mkl' else blas} (aten::mm; BLAS_INFO={blas})"


def gemm_step_probe(backend: Backend, *, products, rounds: int = 1):
    """A callable that computes every product of ``products`` through this backend's float32 matmul, in its tier and
    mode, ``rounds`` times over, one round after another, and returns once they are done. Each product is a mapping
    with ``m``, ``k``, ``n`` (an m x k @ k x n product) and ``ta``/``tb`` (that operand is the transpose of the array
    the framework holds, as in the training step); the callable returns the last round's m x n results, in order, as
    torch tensors. The operands are made once, outside the callable. For the bench: the step's necessary GEMMs
    through the framework (and the first layer's forward product alone), beside the floor's through NumPy's BLAS; the
    bench divides by ``rounds``.

    The products are ``torch.mm(..., out=)`` calls (aten::mm; a transposed operand is a transposed view, which the
    BLAS reads with its transpose flag, as autograd's mm backward hands it), or, where the tuned compiled step runs
    its products through oneDNN, calls of that operator on the same views (eager, each allocating its output)."""
    generator = torch.Generator(device=backend.device)
    generator.manual_seed(0)
    operands = []
    for p in products:
        a, b = (torch.randn(shape, generator=generator, device=backend.device)
                for shape in contract.held_operand_shapes(p))
        operands.append((a.t() if p["ta"] else a, b.t() if p["tb"] else b,
                         torch.empty((p["m"], p["n"]), device=backend.device)))

    if _onednn_products(backend):
        def run():
            outputs = []
            for _ in range(rounds):
                outputs = [torch.ops.dropbench.onednn_mm(a, b) for a, b, _ in operands]
            return outputs
        return run

    def run():
        for _ in range(rounds):
            for a, b, c in operands:
                torch.mm(a, b, out=c)
        backend.synchronize()
        return [c for _, _, c in operands]
    return run


def noise_probe(backend: Backend, *, batch_size: int):
    """(what draws it, a callable): one training step's dropout noise made alone, the way this backend's ``concise``
    training step makes it (every hidden layer's mask drawn and applied to a (batch, width) array, in its tier and
    mode), on a generator of its own so that the backend's stream does not move; the callable returns once the work
    is done. For the bench's start event, which sets it beside the noise's measured cost.

    Eager (both tiers): nn.Dropout's ``bernoulli_``. Stock compiled: the layers' ``F.dropout`` in a default
    ``torch.compile`` graph of their own (inductor's random numbers and the product in its kernels; the graph's
    seed drawn from the default generator, here swapped for the probe's own). Tuned compiled on the CPU: the lowering
    of ``tuned._cpu_inductor`` (``keep_mask_like``: random bits or ``torch.rand``, and a compare; inside the step the
    compare and the product are fused into its kernels, here they are eager ops); on CUDA inductor's own Philox,
    measured here as eager ``bernoulli_``."""
    device = backend.device
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    shapes = [((batch_size, w), p) for w, p in zip(backend.model.hiddens, backend.model.dropouts) if 0 < p < 1]
    ones = [torch.ones(shape, device=device) for shape, _ in shapes]

    if _tuned_compiled(backend) and device.type == "cpu":
        def draw():
            for x, (_, p) in zip(ones, shapes):
                x * tuned.keep_mask_like(x, 1.0 - p, generator) * (1.0 / (1.0 - p))
            backend.synchronize()
        return contract.mask_draw_kinds([p for _, p in shapes], "mt19937", "torch.rand < 1-p (mt19937)"), draw

    if backend.train.mode == "compiled" and not isinstance(backend, tuned.Backend):
        rates = [p for _, p in shapes]
        dropout = torch.compile(lambda xs: [F.dropout(x, p, training=True) for x, p in zip(xs, rates)])
        default = torch.cuda.default_generators[device.index] if device.type == "cuda" else torch.default_generator

        def draw():
            outside = default.get_state()
            default.set_state(generator.get_state())
            try:
                dropout(ones)
            finally:
                generator.set_state(default.get_state())
                default.set_state(outside)
            backend.synchronize()
        return f"inductor's dropout in a default torch.compile graph ({device.type})", draw

    def draw():
        for x, (shape, p) in zip(ones, shapes):
            x * torch.empty(shape, device=device).bernoulli_(1.0 - p, generator=generator) * (1.0 / (1.0 - p))
        backend.synchronize()
    return f"bernoulli_ ({device.type} generator)", draw
