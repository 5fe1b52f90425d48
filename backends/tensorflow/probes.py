"""The bench's instrumentation of a built TensorFlow backend (either tier), off the contract: which GEMM library its
float32 products run in, the training step's products through it, and its dropout draw alone. Each reports what the
backend's tier and mode really run: the stock tier's compiled mode is TF's plain graph wherever Keras' ``"auto"``
leaves XLA off (every CPU-only machine), the tuned tier's runs under XLA with more than one thread, with
``BitDropout``'s masks on the CPU (``backend.jit_compile`` and ``backend.dropout_class()`` say which)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # start-up noise off; errors are still shown

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends import contract  # noqa: E402
from backends.tensorflow.tuned import BitDropout  # noqa: E402


def gemm_library(backend, *, m: int, k: int, n: int) -> str:
    """The GEMM library the backend's float32 matmul runs in this mode for an m x k @ k x n product. Under XLA
    (``backend.jit_compile``: the tuned tier's compiled mode with more than one thread, or wherever Keras' ``"auto"``
    takes XLA) the dot is XLA:CPU's own, whose optimised HLO names its library (none: Eigen); otherwise TF's MatMul
    kernel: oneDNN when TF was built with it and ``TF_ENABLE_ONEDNN_OPTS`` is not 0, else Eigen."""
    from tensorflow.python.util import _pywrap_util_port

    if backend.jit_compile:
        a, b = tf.ones((m, k)), tf.ones((k, n))
        product = tf.function(lambda a, b: tf.linalg.matmul(a, b), jit_compile=True)
        text = product.experimental_get_compiler_ir(a, b)(stage="optimized_hlo")
        return contract.xla_gemm_library(text)
    onednn = _pywrap_util_port.IsMklEnabled() and os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"
    return "oneDNN (TF MatMul)" if onednn else "Eigen (TF MatMul)"


def gemm_step_probe(backend, *, products, rounds: int = 1):
    """A callable that computes every product of ``products`` (mappings with ``m``, ``k``, ``n``, ``ta``, ``tb``: an
    m x k @ k x n product whose operand is the transpose of the array held where ``ta``/``tb`` says) as
    ``tf.linalg.matmul`` calls with ``transpose_a``/``transpose_b``, as this mode runs them, ``rounds`` times over,
    one round after another, and returns the last round's m x n results, in order; the operands are made once,
    outside the callable. Under XLA (``backend.jit_compile``): one program, a ``tf.while_loop`` of ``rounds``
    iterations in which each product's operands pass XLA's optimisation barrier together with the product before
    it, so that the dots run one after another and none is hoisted out of the loop as invariant. Otherwise TF's
    MatMul kernel: one ``tf.function`` graph a round in compiled mode, op by op in eager mode. For the bench, which
    divides by ``rounds``."""
    rng = np.random.default_rng(0)
    flags = [(bool(p["ta"]), bool(p["tb"])) for p in products]
    operands = [tuple(tf.constant(rng.standard_normal(shape), tf.float32)
                      for shape in contract.held_operand_shapes(p)) for p in products]

    def one_round(pairs):
        return [tf.linalg.matmul(a, b, transpose_a=ta, transpose_b=tb) for (a, b), (ta, tb) in zip(pairs, flags)]
    if not backend.jit_compile:
        run = tf.function(one_round) if backend.compiled else one_round

        def rounds_of_ops():
            for _ in range(rounds):
                results = run(operands)
            return results
        return rounds_of_ops

    from tensorflow.compiler.tf2xla.python import xla as tf2xla

    def serial_round(i, pairs, results):
        previous, kept, fresh = results[-1], [], []
        for (a, b), (ta, tb) in zip(pairs, flags):
            previous, a, b = tf2xla.optimization_barrier(previous, a, b)
            previous = tf.linalg.matmul(a, b, transpose_a=ta, transpose_b=tb)
            kept.append((a, b))
            fresh.append(previous)
        return i + 1, kept, fresh

    @tf.function(jit_compile=True)
    def program():
        zeros = [tf.zeros((p["m"], p["n"])) for p in products]
        return tf.while_loop(lambda i, *_: i < rounds, serial_round, (tf.constant(0), operands, zeros))[2]
    return program


def noise_probe(backend, *, batch_size: int):
    """(what draws it, a callable): one training step's dropout noise made alone, the way the backend's ``concise``
    step makes it: its Dropout layer (``backend.dropout_class()``: Keras' own, or the tuned tier's ``BitDropout``
    under XLA on the CPU) on every hidden layer's (batch, width) array, under XLA where this mode runs under XLA, in
    a ``tf.function`` graph in compiled mode otherwise, op by op in eager mode. Fresh layers: the backend's seed
    counters do not move. The callable returns once the work is done."""
    dropout = backend.dropout_class()
    rates = [(w, p) for w, p in zip(backend.model.hiddens, backend.model.dropouts) if 0 < p < 1]
    pairs = [(dropout(p, seed=i + 1), tf.ones((batch_size, w))) for i, (w, p) in enumerate(rates)]

    def dropouts():
        return [layer(x, training=True) for layer, x in pairs]
    xla = backend.jit_compile
    run = tf.function(dropouts, jit_compile=True) if xla else (tf.function(dropouts) if backend.compiled
                                                               else dropouts)
    if dropout is BitDropout:
        how = f"Keras Dropout, {contract.mask_draw_kinds([p for _, p in rates], 'Philox', 'Philox uniform >= p')}"
    else:
        how = "Keras Dropout (stateless Philox)"
    return f"{how}{' under XLA' if xla else ''}", lambda: [t.numpy() for t in run()]
