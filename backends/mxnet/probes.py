"""The bench's instrumentation for the MXNet backend, off the contract: functions of a built backend (either tier)
that report what that tier runs in its mode (``experiments.running.worker`` calls them for bench runs).

- ``gemm_library``: the library behind Gluon's ``Dense`` (``FullyConnected``), the same in both tiers;
- ``gemm_step_probe``: a training step's products as ``FullyConnected`` operators, the way the tier runs them
  (stock: imperative operators in eager mode, a hybridized block in compiled mode; tuned: one bound symbol group);
- ``noise_probe``: the concise model's dropout alone (stock: Gluon's ``Dropout``; tuned: ``ByteDropout`` where the
  rate allows it).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as onp
import mxnet as mx
from mxnet import autograd, gluon, np
from mxnet.gluon import nn

from backends.mxnet import tuned
from backends.mxnet.model import CTX


def gemm_library(backend, *, m: int, k: int, n: int) -> str:
    """The GEMM library this backend's float32 matmul runs in this mode for an m x k @ k x n product, as the
    framework tells it (for the bench's start event). The pip build's FullyConnected is oneDNN's inner product when
    the MKLDNN feature is on, else mshadow's dot over its BLAS; both tiers and both modes run Gluon's ``Dense``."""
    features = mx.runtime.Features()
    blas = next((name[5:] for name in ("BLAS_MKL", "BLAS_OPEN", "BLAS_ATLAS", "BLAS_APPLE")
                 if features.is_enabled(name)), "?")
    return "oneDNN (FullyConnected)" if features.is_enabled("MKLDNN") else f"{blas} BLAS (FullyConnected)"


class _Products(gluon.HybridBlock):
    """Every product as a ``FullyConnected`` of an m x k data and an n x k weight (what ``Dense`` runs)."""

    def __init__(self, widths: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.widths = list(widths)

    def hybrid_forward(self, F, *arrays):
        return [F.npx.fully_connected(arrays[2 * i], arrays[2 * i + 1], no_bias=True, num_hidden=n, flatten=False)
                for i, n in enumerate(self.widths)]


def gemm_step_probe(backend, *, products: Sequence[Mapping[str, Any]], rounds: int = 1):
    """A callable that computes every product of ``products`` through this backend's float32 matmul, in this mode,
    ``rounds`` times over, one round after another, and returns once they are done, with the last round's m x n
    results, in order, as MXNet arrays. Each product is a mapping with ``m``, ``k``, ``n`` (an m x k @ k x n
    product) and ``ta``/``tb``; every product here is a ``FullyConnected`` operator (the library the step's layers
    run) of an m x k data and an n x k weight (FullyConnected's own layout, whatever the transposes the floor's
    operands have). The operands are made once, outside the callable; the bench divides by ``rounds``.

    Tuned tier (both modes): the products bound once as one symbol group, so that one ``forward`` runs them all,
    once a round (the engine queues the rounds; each writes the same outputs, so each waits for the one before), as
    the compiled epoch's bound step runs its layers. Stock tier: the products as a Gluon block, called once a round:
    imperative operators in eager mode, the hybridized block (``static_alloc``, ``static_shape``: one cached op a
    round) in compiled mode, as the stock training step runs its layers."""
    rng = onp.random.default_rng(0)
    operands = [(rng.standard_normal((p["m"], p["k"])).astype(onp.float32),
                 rng.standard_normal((p["n"], p["k"])).astype(onp.float32)) for p in products]
    if isinstance(backend, tuned.Backend):
        outputs, arrays = [], {}
        for i, (p, (x, w)) in enumerate(zip(products, operands)):
            outputs.append(mx.sym.FullyConnected(mx.sym.var(f"x{i}"), mx.sym.var(f"w{i}"), no_bias=True,
                                                 num_hidden=p["n"]))
            arrays[f"x{i}"], arrays[f"w{i}"] = mx.nd.array(x, ctx=CTX), mx.nd.array(w, ctx=CTX)
        executor = mx.sym.Group(outputs).bind(CTX, arrays, grad_req="null")

        def run_bound():
            for _ in range(rounds):
                executor.forward(is_train=False)
            mx.nd.waitall()
            return executor.outputs
        return run_bound

    block = _Products([p["n"] for p in products])
    if backend.train.mode == "compiled":
        block.hybridize(static_alloc=True, static_shape=True)
    arrays = [np.array(a, dtype=onp.float32) for pair in operands for a in pair]

    def run_block():
        results = None
        for _ in range(rounds):
            results = block(*arrays)
        mx.nd.waitall()
        return list(results) if isinstance(results, (list, tuple)) else [results]
    return run_block


def noise_probe(backend, *, batch_size: int):
    """(what draws it, a callable): one training step's dropout noise made alone, the way this backend's ``concise``
    training step makes it: every hidden layer's (batch, width) array through that layer's dropout in training mode,
    hybridized in compiled mode. Stock: Gluon's ``Dropout``; tuned: ``ByteDropout`` with its bytes where the rate
    allows it, else Gluon's ``Dropout``. Both draw from MXNet's global generator, which the backend reseeds from its
    own stream before each of its own draws, so the backend's noise does not move."""
    blocks, kinds = [], set()
    bytes_allowed = isinstance(backend, tuned.Backend)
    for w, p in zip(backend.model.hiddens, backend.model.dropouts):
        if 0 < p < 1:
            use_bytes = bytes_allowed and tuned.ByteDropout.applies(p, w)
            block = tuned.ByteDropout(p, w) if use_bytes else nn.Dropout(p)
            block.initialize(ctx=CTX)
            if backend.train.mode == "compiled":
                block.hybridize(static_alloc=True, static_shape=True)
            blocks.append((block, np.ones((batch_size, w))))
            kinds.add(f"{block.bits} mt19937 bit(s) an element (ByteDropout: randint bytes, a table)"
                      if use_bytes else "Gluon Dropout (MXNet's CPU sampler)")

    def draw():
        with autograd.train_mode():
            outputs = [block(x, block.draw(batch_size).as_np_ndarray()) if isinstance(block, tuned.ByteDropout)
                       else block(x) for block, x in blocks]
        for out in outputs:
            out.wait_to_read()
    return ", ".join(sorted(kinds)), draw
