"""D2L's dropout MLP (the "Dropout" section, MXNet tab) in Gluon's stock layers, and what the other noise kinds and
injected masks need.

np vs nd: this module uses ``mxnet.np``/``npx`` with ``npx.set_np()``, as D2L's MXNet tab does. The section's
``dropout_layer`` is written against ``mxnet.np`` (``np.random.uniform(0, 1, X.shape) > dropout``), Gluon 1.9's layers
switch to the ``npx`` operators under it (``npx.fully_connected``, ``npx.dropout``), and NumPy semantics (0-d arrays,
NumPy dtype rules) keep the glue code close to the NumPy oracle. ``set_np`` is a process-wide switch; this package is
only ever imported in the MXNet worker.

Every model here is a ``HybridBlock`` so that ``compiled`` can ``hybridize`` it. A hybridized graph freezes a Python
branch when it is traced (D2L's scratch model branches on ``autograd.is_training()``), so the noise of every graph
here is fixed when the graph is built: a training graph draws (or applies an injected draw), and evaluation runs a
noise-free chain of the same ``Dense`` layers (parameters are shared). Only Gluon's own ``Dropout`` reads the
training flag at run time: it drops inside ``autograd.record()`` and under ``autograd.train_mode()``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as onp
import mxnet as mx
from mxnet import gluon, npx
from mxnet.gluon import nn

from backends import contract

npx.set_np()

CTX = mx.cpu()


def dropout_layer(F, X, dropout: float, keep=None):
    """The section's ``dropout_layer`` in ``mxnet.np``: keep where u > p, scale by 1/(1-p).

    ``F`` is Gluon's operator namespace (``mx.nd`` imperatively, ``mx.sym`` while a hybridized graph is traced), so
    the shape comes from X itself rather than ``X.shape`` (a traced symbol has none). p = 0 is an exact identity
    (D2L's ``u > 0`` would drop an element with probability 2**-24). ``keep`` injects the 0/1 mask instead of drawing.
    """
    assert 0 <= dropout <= 1
    if dropout == 1:
        return F.np.zeros_like(X)
    if keep is None:
        if dropout == 0:
            return X
        keep = (F.np.random.uniform(F.np.zeros_like(X), 1.0) > dropout).astype(onp.float32)
    return keep * X * contract.keep_scale(dropout)


class DropAll(gluon.HybridBlock):
    """Stands in for ``nn.Dropout`` at p = 1 in a training graph (Gluon's gives NaN there, its scale 1/(1-p) being
    infinite): every unit dropped."""

    def hybrid_forward(self, F, x):
        return F.np.zeros_like(x)


class Noise(gluon.HybridBlock):
    """One hidden layer's activation noise, written with framework ops; draws its own, or applies an injected draw
    (a 0/1 keep mask for dropout, z ~ N(0, 1) for gaussian and additive)."""

    def __init__(self, kind: str, p: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kind, self.p = kind, float(p)

    def hybrid_forward(self, F, h, *draw):
        draw = draw[0] if draw else None
        if self.kind == "dropout":
            return dropout_layer(F, h, self.p, keep=draw)
        if self.p == 0:
            return h
        if draw is None:
            draw = F.np.random.normal(F.np.zeros_like(h), 1.0)
        if self.kind == "gaussian":
            return h * (1.0 + contract.gaussian_noise_scale(self.p) * draw)
        return h + contract.additive_noise_scale(self.p) * draw  # additive


class Dense(nn.Dense):
    """Gluon's Dense, optionally reading its (out, in) weight through a multiplier (dropconnect's kernel mask)."""

    def hybrid_forward(self, F, x, *weight_mult, weight, bias=None):
        if weight_mult:
            weight = weight * weight_mult[0]
        return super().hybrid_forward(F, x, weight, bias)


def dense_layers(layer_sizes: Sequence[int]) -> list[Dense]:
    """D2L's layers: ``Dense(h, activation="relu")`` for every hidden layer, then a linear ``Dense`` to the outputs;
    ``in_units`` given so that the parameters exist before the first call (``set_params`` can load them)."""
    last = len(layer_sizes) - 2
    return [Dense(fan_out, in_units=fan_in, activation=None if i == last else "relu")
            for i, (fan_in, fan_out) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:]))]


def noise_free(denses) -> nn.HybridSequential:
    """The evaluation graph: the same Dense layers, no noise."""
    net = nn.HybridSequential()
    net.add(*denses)
    return net


class DropoutMLP(nn.HybridSequential):
    """D2L's concise model: ``nn.HybridSequential`` of Dense(relu), ``nn.Dropout``, Dense(relu), ``nn.Dropout``,
    Dense, over the given Dense layers. At p = 1 a layer is ``DropAll`` (Gluon's Dropout gives NaN there)."""

    def __init__(self, denses, dropouts: Sequence[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.noises = [DropAll() if p >= 1 else nn.Dropout(p) for p in dropouts]
        for dense, drop in zip(denses, self.noises):
            self.add(dense, drop)
        self.add(denses[-1])


class MLP(gluon.HybridBlock):
    """The network as one graph over the shared Dense layers.

    ``noises``: one block per hidden layer applied after its ReLU (None: noise off). ``dropconnect``: the kernel that
    reads hidden layer i is multiplied by keep_i / (1 - p_i). ``inject``: the draws come in as inputs, one per hidden
    layer, already in the framework's layout. ``probe``: also return each hidden layer's (pre_noise, post_noise).
    A noise block whose random draw is an input of the graph (``draw_input = True``, the tuned tier's
    ``ByteDropout``) takes the next of the graph's extra inputs when nothing is injected.
    """

    def __init__(self, denses, noises=None, *, dropconnect=None, inject=False, probe=False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.denses = list(denses)
        for i, dense in enumerate(self.denses):
            self.register_child(dense, f"dense{i}")
        self.noises = list(noises) if noises is not None else None
        for i, noise in enumerate(self.noises or ()):
            self.register_child(noise, f"noise{i}")
        self.dropconnect = tuple(dropconnect) if dropconnect is not None else None
        self.inject, self.probe = inject, probe

    def _weight_mult(self, F, i: int, draws):
        """Multiplier of the kernel that reads hidden layer i, shape (out, in), or None for the identity."""
        p = self.dropconnect[i]
        if self.inject:
            return draws[i] * contract.keep_scale(p)
        if p == 0:
            return None
        if p == 1:
            return F.np.zeros(self.denses[i + 1].weight.shape)
        keep = F.np.random.uniform(0.0, 1.0, size=self.denses[i + 1].weight.shape) > p
        return keep.astype(onp.float32) * contract.keep_scale(p)

    def hybrid_forward(self, F, x, *draws):
        hidden = []
        h = x
        native = iter(draws)  # without inject: one input per noise block that takes its draw as an input
        last = len(self.denses) - 1
        for i, dense in enumerate(self.denses):
            mult = self._weight_mult(F, i - 1, draws) if (self.dropconnect is not None and i > 0) else None
            h = dense(h) if mult is None else dense(h, mult)
            if i == last:
                break
            pre = h
            if self.noises is not None:
                noise = self.noises[i]
                if self.inject:
                    h = noise(h, draws[i])
                elif getattr(noise, "draw_input", False):
                    h = noise(h, next(native))
                else:
                    h = noise(h)
            hidden += [pre, h]
        return (h, *hidden) if self.probe else h


class DropoutMLPScratch(MLP):
    """D2L's scratch model: Dense(relu), the section's ``dropout_layer``, Dense(relu), ``dropout_layer``, Dense, over
    the given Dense layers; the dropout always on (this is the training graph: see the module's docstring)."""

    def __init__(self, denses, dropouts: Sequence[float], **kwargs) -> None:
        super().__init__(denses, [Noise("dropout", p) for p in dropouts], **kwargs)


def correct_count(F, logits, y):
    """How many rows' largest logit is the label, as a float32 scalar."""
    return (F.np.argmax(logits, axis=1).astype(onp.int32) == y).astype(onp.float32).sum()


def cross_entropy(F, logits, y):
    """Per-example softmax cross-entropy ``-log_softmax(logits)[y]``, written with np ops and computed as
    ``log(sum(exp(logits - max))) - (logits - max)[y]``: the same float operations as ``-pick(log_softmax(...), y)``
    with the stable log_softmax, so the same loss values (the gradient skips one broadcast reduction and agrees to
    rounding).

    Why not Gluon's ``SoftmaxCrossEntropyLoss``: it takes its log-probabilities from ``npx.log_softmax``, which MXNet
    1.9.1's pip build runs through oneDNN, whose result is biased (its errors against float64 lean one way, where the
    same formula in np ops rounds both ways), and so is its gradient: over the parity ladder's twenty SGD steps the
    bias accumulates past its tolerance and flips a ReLU that the oracle's float32 twin does not. max/exp/sum/log
    are MXNet's own kernels, with a float32 rounding and no bias."""
    shifted = logits - F.np.max(logits, axis=1, keepdims=True)
    return F.np.log(F.np.sum(F.np.exp(shifted), axis=1)) - F.npx.pick(shifted, y, axis=1)


class SoftmaxCrossEntropy(gluon.HybridBlock):
    """Per-example softmax cross-entropy of logits and integer labels (``cross_entropy``), as a block so that
    ``compiled`` hybridizes it."""

    def hybrid_forward(self, F, logits, y):
        return cross_entropy(F, logits, y)
