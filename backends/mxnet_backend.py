"""MXNet Gluon backend (MXNet 1.9.1, the version D2L pins). Runs in its own venv (numpy 1.23): see backends/__init__.py.

np vs nd: this module uses ``mxnet.np``/``npx`` with ``npx.set_np()``, as D2L's MXNet tab does. The section's
``dropout_layer`` is written against ``mxnet.np`` (``np.random.uniform(0, 1, X.shape) > dropout``), Gluon 1.9's layers
switch to the ``npx`` operators under it (``npx.fully_connected``, ``npx.dropout``), and NumPy semantics (0-d arrays,
NumPy dtype rules) keep the glue code close to the NumPy oracle. The legacy ``nd`` API would work as well but is not
what the book runs. ``set_np`` is a process-wide switch; this module is only ever imported in the MXNet worker.

How the framework is used, and why:
- ``concise`` dropout is D2L's ``nn.HybridSequential``: Dense(relu), Dropout, Dense(relu), Dropout, Dense. Gluon's
  Dropout is active only while ``autograd.is_training()``: inside ``autograd.record()`` (training) and under
  ``autograd.train_mode()`` (``forward(train=True)`` and ``activations(train=True)`` outside training). Gluon's Dropout
  at p = 1 gives NaN (its scale 1/(1-p) is infinite), so at p = 1 that layer is an explicit zeros block instead. At a
  keep probability j / 2**b (D2L's 0.5) the layer is ``ByteDropout``: the same law, its mask from MXNet's random
  bytes, which the backend draws before each step as the layer's input (the chain is then an ``_MLP`` graph).
- Evaluation runs a noise-free chain of the same Dense layers under ``autograd.predict_mode()``. It is a graph of its
  own because a Python branch on ``autograd.is_training()`` (D2L's scratch model) is frozen into a hybridized graph
  when it is traced: every graph here therefore has its noise fixed when it is built, and the mode flag only matters
  to Gluon's own Dropout operator, which reads it at run time.
- The other noise kinds, ``scratch`` dropout, injected masks and dropconnect (a mask on the kernel, via a Dense that
  reads its weight through a multiplier) are ``_MLP`` graphs over the same Dense layers (parameters are shared).
- ``compiled`` = ``hybridize(static_alloc=True, static_shape=True)`` on every graph, and ``train_epoch`` runs the
  hybridized objective's symbol bound once per batch size with ``Symbol.bind`` (``_BoundStep``: MXNet's planned
  forward + backward, no autograd graph built per step); ``eager`` = imperative Gluon.
- Noise RNG: MXNet has only a global generator per device (``mx.random.seed`` and ``npx.random.seed`` are the same
  call). The backend owns a NumPy generator seeded with ``noise_seed(seed)`` and reseeds MXNet's generator from it
  at the start of every call that draws noise, so that a backend's noise depends on its own calls only. The bound
  and the hybridized graph draw the same stream: a seed gives the same masks in both modes.
- SGD and weight decay: MXNet's own ``sgd_update``, the operator ``gluon.Trainer(..., "sgd", {"wd": ...})`` runs,
  over one flat buffer that holds every kernel, then every bias (see ``_SGD``); the Trainer's per-step Python
  (stale-gradient checks, updater dispatch) is gone too. Same maths, bit-identical results; only the compiled epoch
  without weight decay folds lr into the backward pass (``_SGD.step_prescaled``), which moves rounding by ~1e-7.
- Threads: MXNet reads OMP_NUM_THREADS once, when libmxnet loads; the worker sets it before this module is imported.
  There is no Python API to change it later (``MXSetNumOMPThreads`` only sets the calling thread's OpenMP default,
  not the engine's worker threads), so ``threads`` is checked against the environment and a mismatch is reported.
  The engine is chosen from the same count before the import (``_choose_engine``).
- Gluon's Dropout is slow on the CPU: its kernel draws each element from one of 1,024 Mersenne-twister states
  through ``uniform_real_distribution`` (3-6 ns an element; the pip build has no MKL VSL path and only SSE2/SSE3
  kernels), hence ``ByteDropout``; the README's bench section has the measurements.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Mapping, Sequence

import numpy as onp


def _choose_engine() -> None:
    """MXNet's engine, chosen before libmxnet loads (it reads ``MXNET_ENGINE_TYPE`` once); a user's choice stands.

    The default threaded engine runs operators on a worker thread with its own OpenMP team while the Python thread
    keeps pushing operators. When that team already has every core, the Python thread preempts one of its threads
    and the whole team waits at the next barrier: with 2 threads on 2 cores an epoch took 1.44 s, against 1.0 s with 1
    thread. The naive engine runs each operator on the calling thread: 0.73 s with 2 threads. With fewer threads than
    cores the threaded engine stays: it overlaps Python with compute (1.0 against 1.17 s for the naive engine at 1
    thread here)."""
    if "MXNET_ENGINE_TYPE" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(os.environ.get("OMP_NUM_THREADS") or cores)
    if threads >= cores:
        os.environ["MXNET_ENGINE_TYPE"] = "NaiveEngine"


_choose_engine()

import mxnet as mx  # noqa: E402  (after the engine choice)
from mxnet import autograd, gluon, np, npx  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from backends import contract, registry
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics, Params

npx.set_np()

_CTX = mx.cpu()


def _scale(p: float) -> float:
    """Inverted-dropout scale 1/(1-p); p = 1 keeps nothing (D2L's zeros branch)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


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
    return keep * X / (1.0 - dropout)


class _DropAll(gluon.HybridBlock):
    """Stands in for ``nn.Dropout`` at p = 1 in training (Gluon's gives NaN there): every unit dropped."""

    def hybrid_forward(self, F, x):
        return F.np.zeros_like(x)


class ByteDropout(gluon.HybridBlock):
    """Gluon's ``Dropout`` at a keep probability j / 2**b (D2L's 0.5: b = 1), its keep mask from random bytes of
    MXNet's own generator: each byte (``randint(0, 256)``: one mt19937 output modulo 256, uniform exactly) holds the
    b-bit fields of 8 / b neighbouring elements, kept when a field is at least 2**b - j (probability j / 2**b
    exactly), and ``take`` expands the bytes through a 256 x (8 / b) table of those decisions already scaled by
    1 / (1 - p); one product applies it. The masks differ from Gluon's, the law does not.

    Why: Gluon's CPU Dropout spends 3-6 ns an element in its sampler (a ``uniform_real_distribution`` over one of
    1,024 mt19937 states an element); a byte serves eight elements at 0.5. The bytes come in as the layer's input,
    drawn by ``draw`` before the step: a hybridized graph is traced once for every batch size and MXNet has no
    ``randint_like``, so a draw inside the graph could not take its shape from the batch."""

    def __init__(self, p: float, width: int, **kwargs) -> None:
        super().__init__(**kwargs)
        bits, kept = contract.dyadic_keep(1.0 - p)
        self.bits, self.width, self.per_byte = bits, int(width), 8 // bits
        if self.width % self.per_byte:
            raise ValueError(f"ByteDropout needs a width that is a multiple of {self.per_byte}, got {width}")
        fields = (onp.arange(256)[:, None] >> (bits * onp.arange(self.per_byte))) & ((1 << bits) - 1)
        table = onp.where(fields >= (1 << bits) - kept, onp.float32(_scale(p)), onp.float32(0.0))
        self.table = self.params.get_constant("table", table.astype(onp.float32))

    @staticmethod
    def bits_for(p: float) -> int | None:
        """b, the random bits an element at dropout p (None where 1 - p is not j / 2**b)."""
        dyadic = contract.dyadic_keep(1.0 - p)
        return dyadic[0] if dyadic else None

    @staticmethod
    def applies(p: float, width: int) -> bool:
        """Whether a concise dropout layer of this rate and width takes ByteDropout (else Gluon's own)."""
        bits = ByteDropout.bits_for(p)
        return bits is not None and width % (8 // bits) == 0

    def draw_shape(self, batch_size: int) -> tuple[int, int]:
        return int(batch_size), self.width // self.per_byte

    def draw(self, batch_size: int, out=None):
        """One step's bytes, ``draw_shape`` int32 from MXNet's global generator (into ``out``, an nd array, when
        given)."""
        return mx.nd.random.randint(0, 256, shape=self.draw_shape(batch_size), dtype="int32", ctx=_CTX, out=out)

    def hybrid_forward(self, F, h, draw, table):
        scaled_keep = F.npx.reshape(F.np.take(table, draw, axis=0, mode="clip"), (-2, -5))  # (B, W / 8, 8) -> (B, W)
        return h * scaled_keep


class _Noise(gluon.HybridBlock):
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
            return h * (1.0 + math.sqrt(self.p / (1.0 - self.p)) * draw)
        return h + self.p * draw  # additive


class _Dense(nn.Dense):
    """Gluon's Dense, optionally reading its (out, in) weight through a multiplier (dropconnect's kernel mask)."""

    def hybrid_forward(self, F, x, *weight_mult, weight, bias=None):
        if weight_mult:
            weight = weight * weight_mult[0]
        return super().hybrid_forward(F, x, weight, bias)


class _MLP(gluon.HybridBlock):
    """The network as one graph over the shared Dense layers.

    ``noises``: one block per hidden layer applied after its ReLU (None: noise off). ``dropconnect``: the kernel that
    reads hidden layer i is multiplied by keep_i / (1 - p_i). ``inject``: the draws come in as inputs, one per hidden
    layer, already in the framework's layout. ``probe``: also return each hidden layer's (pre_noise, post_noise).
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
            return draws[i] * _scale(p)
        if p == 0:
            return None
        if p == 1:
            return F.np.zeros(self.denses[i + 1].weight.shape)
        keep = F.np.random.uniform(0.0, 1.0, size=self.denses[i + 1].weight.shape) > p
        return keep.astype(onp.float32) * _scale(p)

    def hybrid_forward(self, F, x, *draws):
        hidden = []
        h = x
        native = iter(draws)  # without inject: one input per ByteDropout, in layer order
        last = len(self.denses) - 1
        for i, dense in enumerate(self.denses):
            mult = self._weight_mult(F, i - 1, draws) if (self.dropconnect is not None and i > 0) else None
            h = dense(h) if mult is None else dense(h, mult)
            if i == last:
                break
            pre = h
            if self.noises is not None:
                if self.inject:
                    h = self.noises[i](h, draws[i])
                elif isinstance(self.noises[i], ByteDropout):
                    h = self.noises[i](h, next(native))
                else:
                    h = self.noises[i](h)
            hidden += [pre, h]
        return (h, *hidden) if self.probe else h


def cross_entropy(F, logits, y):
    """Per-example softmax cross-entropy ``-log_softmax(logits)[y]``, written with np ops and computed as
    ``log(sum(exp(logits - max))) - (logits - max)[y]``: the same float operations as ``-pick(log_softmax(...), y)``
    with the stable log_softmax, so the same loss values (the gradient skips one broadcast reduction and agrees to
    rounding).

    Why not Gluon's ``SoftmaxCrossEntropyLoss``: it takes its log-probabilities from ``npx.log_softmax``, which MXNet
    1.9.1 runs through oneDNN, whose result is biased (mean error ~7e-7) and whose gradient is off by ~3e-6 relative:
    enough to drift past the parity ladder's 1e-5 in twenty SGD steps (max/exp/sum/log are MXNet's own exact
    kernels). Feeding it a hand-written log_softmax works but costs two broadcast subtractions whose backward
    reductions (and the loss block's flatten/mean/scale ops) took ~0.2 ms of a ~4.6 ms step on one core; picking the
    label's shifted logit directly leaves one broadcast subtraction."""
    shifted = logits - F.np.max(logits, axis=1, keepdims=True)
    return F.np.log(F.np.sum(F.np.exp(shifted), axis=1)) - F.npx.pick(shifted, y, axis=1)


class _Loss(gluon.HybridBlock):
    """Per-example softmax cross-entropy of logits and integer labels (see ``cross_entropy``)."""

    def hybrid_forward(self, F, logits, y):
        return cross_entropy(F, logits, y)


class _Objective(gluon.HybridBlock):
    """Mean softmax cross-entropy of a batch (D2L: ``SoftmaxCrossEntropyLoss()(...).mean()``) and its correct count,
    in one graph so that a compiled step is one cached op forward."""

    def __init__(self, net, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = net
        self.loss = _Loss()

    def hybrid_forward(self, F, x, y, *draws):
        logits = self.net(x, *draws)
        correct = (F.np.argmax(logits, axis=1).astype(onp.int32) == y).astype(onp.float32).sum()
        return self.loss(logits, y).mean(), correct


def _rehome(params) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """Moves the data and gradient arrays of Gluon ``params`` into two contiguous buffers and makes each parameter's
    arrays views of its slice; returns the two buffers (classic NDArrays: the update operators are ``nd`` operators).

    Gluon has no public API to place a parameter's arrays, so this sets ``Parameter._data``/``_grad`` and marks the
    views for autograd (what ``Parameter.initialize`` does for the arrays it allocates). Every later read goes through
    ``param.data()``/``param.grad()`` (hybridized graphs fetch them on each call), ``set_data`` writes into the view,
    and ``backward`` writes each gradient into its view."""
    size = sum(p.data().size for p in params)
    data, grads = mx.nd.zeros((size,), ctx=_CTX), mx.nd.zeros((size,), ctx=_CTX)
    data_views, grad_views, offset = [], [], 0
    for param in params:
        shape, count = param.data().shape, param.data().size
        data_view = data[offset:offset + count].reshape(shape).as_np_ndarray()  # nd slices are views, np's copies
        grad_view = grads[offset:offset + count].reshape(shape).as_np_ndarray()
        data_view[:] = param.data()
        param._data, param._grad = [data_view], [grad_view]
        data_views.append(data_view)
        grad_views.append(grad_view)
        offset += count
    autograd.mark_variables(data_views, grad_views, grad_reqs="write")
    return data, grads


class _SGD:
    """Plain SGD with weight decay on the Dense layers, with MXNet's own update operator ``sgd_update`` (the one
    ``gluon.Trainer(..., "sgd", {"wd": ...})`` runs: ``W -= lr * (grad + wd * W)``, rescale 1 because the loss is
    already a batch mean, D2L's ``step(1)``), called directly.

    Each parameter is its own pair of arrays in Gluon, so an update costs one operator call per parameter, or one
    ``multi_sgd_update`` for several, whose CPU kernel walks every array over the largest one's length (0.95 ms a call
    here; the Trainer's default aggregation). The parameters are therefore re-homed into one buffer, kernels first
    (``_rehome``), and ``step`` is two ``sgd_update`` calls, weight decay on the kernels only: 0.23 ms with two
    threads, against 0.42 ms for per-array calls plus one ``multi_sgd_update``; bit-identical results.

    ``step_prescaled``: without weight decay the update is ``W += G`` once the gradient already is ``-lr * grad``,
    which the compiled epoch's bound graph gets for free by seeding its backward pass with ``-lr`` instead of 1
    (``head_gradient``). ``elemwise_add`` over the buffer takes 0.09 ms against ``sgd_update``'s 0.21 ms (its
    per-element kernel is scalar code in this SSE2 build). The same update; the rounding moves by about 1e-7 relative
    (the product by lr happens at the head of the chain rule instead of at its end)."""

    def __init__(self, denses, *, lr: float, wd: float) -> None:
        kernels = [dense.weight for dense in denses]
        self.data, self.grads = _rehome(kernels + [dense.bias for dense in denses])
        split = sum(kernel.data().size for kernel in kernels)
        self.regions = [(self.data[:split], self.grads[:split], float(wd)),
                        (self.data[split:], self.grads[split:], 0.0)]
        self.lr = float(lr)
        self.prescaled = float(wd) == 0.0
        self.head_gradient = -self.lr if self.prescaled else 1.0

    def step(self) -> None:
        for weights, grads, wd in self.regions:
            mx.nd.sgd_update(weights, grads, out=weights, lr=self.lr, wd=wd, rescale_grad=1.0)

    def step_prescaled(self) -> None:
        mx.nd.elemwise_add(self.data, self.grads, out=self.data)


class _EpochStep(gluon.HybridBlock):
    """One training step of the compiled epoch: the batch gathered from the whole training split by its row indices,
    then the objective, whose mean loss and correct count also come out as one (2,) array for the epoch's record."""

    def __init__(self, objective, **kwargs) -> None:
        super().__init__(**kwargs)
        self.objective = objective

    def hybrid_forward(self, F, x_all, y_all, rows, *draws):
        x = F.np.take(x_all, rows, axis=0, mode="wrap")  # rows are a permutation's slice: every mode gathers alike
        y = F.np.take(y_all, rows, axis=0, mode="wrap")
        loss, correct = self.objective(x, y, *draws)
        return loss, F.np.stack([loss, correct])


class _BoundStep:
    """The compiled epoch's step as one bound graph: the ``_EpochStep`` symbol of the same Gluon blocks, bound with
    ``Symbol.bind`` to the parameters' own data and gradient arrays (views of ``_SGD``'s buffers) and to the whole
    training split (and each ByteDropout's bytes: inputs that ``run`` redraws in place), for one batch size.

    Why not the hybridized block (``CachedOp``) as eager-style calls per batch: every ``CachedOp`` call under
    ``autograd.record`` builds and then walks an autograd graph, 0.38 ms of fixed cost per step here (measured with a
    2-unit model) in a ~3 ms step, and the batch gather, label slice and metric copies are three more operator calls
    from Python. The bound executor plans forward and backward once; a step is one index copy, the bytes' draws,
    ``forward``, ``backward``, the update and one metrics copy. Two threads, naive engine: 0.73 s per epoch with the
    hybridized block, 0.64 s bound, 0.61 s bound with ``_SGD.step_prescaled``; same operators, and with the same
    update the same results to the bit (the parity ladder's whole-epoch rungs run this path, with and without
    weight decay)."""

    def __init__(self, objective, x_all, y_all, batch_size: int, head_gradient: float, byte_dropouts=()) -> None:
        self.byte_dropouts, self.batch_size = list(byte_dropouts), batch_size
        draw_names = [f"draw{i}" for i in range(len(self.byte_dropouts))]
        inputs = [mx.sym.var(name).as_np_ndarray() for name in ("x_all", "y_all", "rows", *draw_names)]
        loss, record = _EpochStep(objective)(*inputs)
        loss = mx.sym.MakeLoss(loss.as_nd_ndarray().reshape((1,)), grad_scale=head_gradient)  # backward's seed
        graph = mx.sym.Group([loss, mx.sym.BlockGrad(record.as_nd_ndarray())])
        self.rows = mx.nd.zeros((batch_size,), ctx=_CTX, dtype="int64")
        # bound inputs, drawn in place by every step (allocated without a draw: the stream stays the eager mode's)
        self.draws = [mx.nd.zeros(layer.draw_shape(batch_size), ctx=_CTX, dtype="int32")
                      for layer in self.byte_dropouts]
        args = {"x_all": x_all, "y_all": y_all, "rows": self.rows, **dict(zip(draw_names, self.draws))}
        grads, reqs = {}, {}
        by_name = {param.name: param for param in objective.collect_params().values()}
        for name in graph.list_arguments():
            param = by_name.get(name)
            if param is not None:
                args[name] = param.data().as_nd_ndarray()  # shares the parameter's memory
            if param is not None and param.grad_req != "null":  # ByteDropout's tables are constants
                grads[name] = param.grad().as_nd_ndarray()
                reqs[name] = "write"
            else:
                reqs[name] = "null"
        missing = set(graph.list_arguments()) - set(args)
        if missing:
            raise RuntimeError(f"mxnet backend: the bound step has unexpected inputs {sorted(missing)}")
        self.executor = graph.bind(_CTX, args=args, args_grad=grads, grad_req=reqs)
        self.record = self.executor.outputs[1]  # bound output arrays: rewritten in place by every forward

    def run(self, rows: onp.ndarray, record_out) -> None:
        self.rows._sync_copyfrom(rows)  # what ``rows[:] = ...`` ends in, without its indexing dispatch (0.1 ms)
        for layer, draw in zip(self.byte_dropouts, self.draws):
            layer.draw(self.batch_size, out=draw)
        self.executor.forward(is_train=True)
        self.executor.backward()
        self.record.copyto(record_out)


class Backend(contract.Backend):
    name = "mxnet"
    framework = "mxnet"
    capabilities = registry.capabilities("mxnet")

    def __init__(self, *, model, train, threads=None) -> None:
        super().__init__(model=model, train=train, threads=threads)
        if threads is not None and os.environ.get("OMP_NUM_THREADS") != str(threads):
            warnings.warn(f"mxnet backend: threads={threads} cannot be applied after libmxnet has loaded "
                          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')!r}); run it through the worker")
        self._compiled = train.mode == "compiled"
        self._data_ref = None  # the host training array whose device copy is cached (kept alive: id() stays valid)
        self._bound_steps: dict[int, _BoundStep] = {}

    # --- building ------------------------------------------------------------------------------------------------
    def _graph(self, block):
        if self._compiled:
            block.hybridize(static_alloc=True, static_shape=True)
        return block

    def build(self, *, seed: int, params: Mapping[str, onp.ndarray] | None = None) -> None:
        model = self.model
        sizes = model.layer_sizes
        last = len(sizes) - 2
        self.denses = [_Dense(fan_out, in_units=fan_in, activation=None if i == last else "relu")
                       for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]))]
        self._eval_net = nn.HybridSequential()
        self._eval_net.add(*self.denses)
        mx.random.seed(int(seed))  # the framework's own init draws from MXNet's global generator
        self._eval_net.initialize(ctx=_CTX)  # D2L: initialize() = init.Uniform(0.07) weights, zero biases
        if params is not None:
            self.set_params(params=params)
        self._sgd = _SGD(self.denses, lr=self.train.lr, wd=self.train.weight_decay)  # decays the kernels only

        noise, dropouts = model.noise, model.dropouts
        if noise == "dropconnect":
            self._train_net = _MLP(self.denses, dropconnect=dropouts)
            self._noises = None
        elif model.impl == "concise" and noise == "dropout":
            self._noises = [_DropAll() if p >= 1 else ByteDropout(p, width) if ByteDropout.applies(p, width)
                            else nn.Dropout(p) for p, width in zip(dropouts, model.hiddens)]
            if any(isinstance(drop, ByteDropout) for drop in self._noises):
                self._train_net = _MLP(self.denses, self._noises)  # D2L's DropoutMLP, the bytes as inputs
            else:
                self._train_net = nn.HybridSequential()  # D2L's DropoutMLP
                for dense, drop in zip(self.denses, self._noises):
                    self._train_net.add(dense, drop)
                self._train_net.add(self.denses[-1])
        else:  # scratch dropout (the section's dropout_layer), and gaussian/additive in both impls
            self._noises = [_Noise(noise, p) for p in dropouts]
            self._train_net = _MLP(self.denses, self._noises)
        self._byte_dropouts = [drop for drop in self._noises or () if isinstance(drop, ByteDropout)]
        for drop in self._byte_dropouts:
            drop.initialize(ctx=_CTX)  # its table
        self._graph(self._eval_net)
        self._graph(self._train_net)
        self._train_objective = self._graph(_Objective(self._train_net))
        self._loss = self._graph(_Loss())
        self._lazy: dict[str, gluon.HybridBlock] = {}
        self._bound_steps = {}  # bound to the previous build's parameters
        self._noise_rng = onp.random.default_rng(contract.noise_seed(seed))
        npx.random.seed(contract.noise_seed(seed))

    def _lazy_graph(self, key: str):
        """Graphs that only the injected-mask and probing calls need, built on first use."""
        if key not in self._lazy:
            dropconnect = self.model.dropouts if self.model.noise == "dropconnect" else None
            if key == "inject":
                noises = None if dropconnect else [_Noise(self.model.noise, p) for p in self.model.dropouts]
                block = _MLP(self.denses, noises, dropconnect=dropconnect, inject=True)
                self._lazy["inject_noises"] = noises
            elif key == "inject_objective":
                block = _Objective(self._lazy_graph("inject"))
            elif key == "probe_inject":
                self._lazy_graph("inject")
                block = _MLP(self.denses, self._lazy["inject_noises"], dropconnect=dropconnect, inject=True,
                             probe=True)
            elif key == "probe_native":
                block = _MLP(self.denses, self._noises, dropconnect=dropconnect, probe=True)
            elif key == "probe_eval":
                block = _MLP(self.denses, None, probe=True)
            else:
                raise KeyError(key)
            self._lazy[key] = self._graph(block)
        return self._lazy[key]

    def _native_draws(self, batch_size: int) -> list:
        """The bytes every ByteDropout of the training graph takes for one step of ``batch_size``, in layer order."""
        return [layer.draw(batch_size).as_np_ndarray() for layer in self._byte_dropouts]

    def _reseed(self) -> None:
        """A fresh MXNet seed from the backend's own noise generator, before every call that draws noise."""
        npx.random.seed(int(self._noise_rng.integers(0, 2**31 - 1)))

    # --- parameters ----------------------------------------------------------------------------------------------
    def get_params(self) -> Params:
        params: Params = {}
        for i, dense in enumerate(self.denses):
            params[f"dense_{i}/kernel"] = onp.ascontiguousarray(dense.weight.data().asnumpy().T, dtype=onp.float32)
            params[f"dense_{i}/bias"] = onp.array(dense.bias.data().asnumpy(), dtype=onp.float32)
        return params

    def set_params(self, *, params: Mapping[str, onp.ndarray]) -> None:
        contract.check_params(self.model, params)
        for i, dense in enumerate(self.denses):
            dense.weight.set_data(np.array(onp.asarray(params[f"dense_{i}/kernel"], dtype=onp.float32).T))
            dense.bias.set_data(np.array(onp.asarray(params[f"dense_{i}/bias"], dtype=onp.float32)))

    # --- inputs --------------------------------------------------------------------------------------------------
    @staticmethod
    def _x(x) -> np.ndarray:
        x = onp.asarray(x, dtype=onp.float32)
        return np.array(x.reshape(len(x), -1), dtype=onp.float32)

    @staticmethod
    def _y(y) -> np.ndarray:
        return np.array(onp.asarray(y), dtype=onp.int32)

    def _draws(self, masks: Sequence[onp.ndarray], batch_size: int) -> list:
        """Injected draws in the framework's layout: dropconnect's (in, out) kernel masks become (out, in)."""
        expected = contract.noise_shapes(self.model, batch_size)
        if len(masks) != len(expected):
            raise ValueError(f"masks needs one array per hidden layer ({len(expected)}), got {len(masks)}")
        draws = []
        for mask, shape in zip(masks, expected):
            mask = onp.asarray(mask, dtype=onp.float32)
            if mask.shape != tuple(shape):
                raise ValueError(f"mask has shape {mask.shape}, expected {tuple(shape)}")
            draws.append(np.array(mask.T if self.model.noise == "dropconnect" else mask, dtype=onp.float32))
        return draws

    # --- forward / training ----------------------------------------------------------------------------------
    def forward(self, *, x, train, masks=None) -> onp.ndarray:
        xb = self._x(x)
        if not train:
            with autograd.predict_mode():
                return self._eval_net(xb).asnumpy()
        with autograd.train_mode():  # outside record(): Gluon's Dropout needs the training flag to drop
            if masks is not None:
                return self._lazy_graph("inject")(xb, *self._draws(masks, len(x))).asnumpy()
            self._reseed()
            return self._train_net(xb, *self._native_draws(len(x))).asnumpy()

    def _objective_and_draws(self, masks, batch_size):
        if masks is None:
            self._reseed()
            return self._train_objective, self._native_draws(batch_size)
        return self._lazy_graph("inject_objective"), self._draws(masks, batch_size)

    def loss_and_grads(self, *, x, y, masks=None) -> tuple[float, Params]:
        objective, draws = self._objective_and_draws(masks, len(x))
        xb, yb = self._x(x), self._y(y)
        with autograd.record():
            loss, _ = objective(xb, yb, *draws)
        loss.backward()
        grads: Params = {}
        for i, dense in enumerate(self.denses):
            grads[f"dense_{i}/kernel"] = onp.ascontiguousarray(dense.weight.grad().asnumpy().T, dtype=onp.float32)
            grads[f"dense_{i}/bias"] = onp.array(dense.bias.grad().asnumpy(), dtype=onp.float32)
        return float(loss.item()), grads

    def train_step(self, *, x, y, masks=None) -> float:
        objective, draws = self._objective_and_draws(masks, len(x))
        xb, yb = self._x(x), self._y(y)
        with autograd.record():
            loss, _ = objective(xb, yb, *draws)
        loss.backward()
        self._sgd.step()
        return float(loss.item())

    def _device_data(self, batches: EpochBatches):
        if self._data_ref is not batches.x:
            self._x_dev, self._y_dev = self._x(batches.x), self._y(batches.y)
            self._data_ref = batches.x
            self._bound_steps = {}  # bound to the previous split
        return self._x_dev, self._y_dev

    def _bound_step(self, batch_size: int) -> _BoundStep:
        if batch_size not in self._bound_steps:
            self._bound_steps[batch_size] = _BoundStep(self._train_objective, self._x_dev.as_nd_ndarray(),
                                                       self._y_dev.as_nd_ndarray(), batch_size,
                                                       head_gradient=self._sgd.head_gradient,
                                                       byte_dropouts=self._byte_dropouts)
        return self._bound_steps[batch_size]

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        x_dev, y_dev = self._device_data(batches)
        order = onp.asarray(batches.order, dtype=onp.int64)
        n, size = len(order), batches.batch_size
        starts = range(0, n, size)
        self._reseed()
        if self._compiled:
            records = mx.nd.zeros((len(starts), 2), ctx=_CTX)  # per step: mean loss, correct count
            update = self._sgd.step_prescaled if self._sgd.prescaled else self._sgd.step
            for step, start in enumerate(starts):
                rows = order[start:start + size]
                self._bound_step(len(rows)).run(rows, records[step])
                update()
            stats = records.asnumpy().astype(onp.float64).T  # waits for the epoch
        else:
            stats = self._eager_epoch(x_dev, y_dev, order, size)
        weights = onp.full(len(starts), float(size))
        weights[-1] = n - size * (len(starts) - 1)
        return EpochMetrics(loss=float(stats[0] @ weights) / n, acc=float(stats[1].sum()) / n)

    def _eager_epoch(self, x_dev, y_dev, order: onp.ndarray, size: int) -> onp.ndarray:
        """Imperative Gluon, D2L's loop: per step the batch gathered on the MXNet side, the objective under
        ``autograd.record()``, ``backward``, the update. Returns the steps' (mean loss, correct count) as (2, steps)."""
        order_dev = np.array(order, dtype=onp.int64)
        losses, corrects = [], []
        objective, sgd = self._train_objective, self._sgd
        # The order is a permutation of the split's rows, so every take mode gathers the same rows; "wrap" measured
        # ~0.03 ms faster than "clip" per 256 x 784 gather here. The epoch's labels are gathered in one op and each
        # batch's labels are a view of them.
        y_epoch = np.take(y_dev, order_dev, axis=0, mode="wrap")
        for start in range(0, len(order), size):  # no host read inside the loop: metrics stay on the MXNet side
            xb, yb = np.take(x_dev, order_dev[start:start + size], axis=0, mode="wrap"), y_epoch[start:start + size]
            draws = self._native_draws(len(yb))
            with autograd.record():
                loss, correct = objective(xb, yb, *draws)
            loss.backward()
            sgd.step()
            losses.append(loss)
            corrects.append(correct)
        return np.stack([np.stack(losses), np.stack(corrects)]).asnumpy().astype(onp.float64)  # waits for the epoch

    def evaluate(self, *, x, y) -> EvalMetrics:
        loss_sum, correct = 0.0, 0
        with autograd.predict_mode():
            for start in range(0, len(x), 10_000):
                xb, yb = self._x(x[start:start + 10_000]), self._y(y[start:start + 10_000])
                logits = self._eval_net(xb)
                losses = self._loss(logits, yb)
                loss_sum += float(losses.asnumpy().astype(onp.float64).sum())
                correct += int((logits.asnumpy().argmax(axis=1) == onp.asarray(y[start:start + 10_000])).sum())
        return EvalMetrics(loss=loss_sum / len(x), acc=correct / len(x))

    def activations(self, *, x, train, masks=None) -> dict[str, onp.ndarray]:
        xb = self._x(x)
        if not train:
            with autograd.predict_mode():
                outputs = self._lazy_graph("probe_eval")(xb)
        else:
            with autograd.train_mode():  # concise dropout: the same nn.Dropout blocks the training graph uses
                if masks is not None:
                    outputs = self._lazy_graph("probe_inject")(xb, *self._draws(masks, len(x)))
                else:
                    self._reseed()
                    outputs = self._lazy_graph("probe_native")(xb, *self._native_draws(len(x)))
        result = {}
        for i in range(len(self.model.hiddens)):
            result[f"hidden_{i}/pre_noise"] = outputs[1 + 2 * i].asnumpy().astype(onp.float32)
            result[f"hidden_{i}/post_noise"] = outputs[2 + 2 * i].asnumpy().astype(onp.float32)
        return result

    def gemm_library(self, *, m: int, k: int, n: int) -> str:
        """The pip build's FullyConnected is oneDNN's inner product when the MKLDNN feature is on, else mshadow's
        dot over its BLAS."""
        features = mx.runtime.Features()
        blas = next((name[5:] for name in ("BLAS_MKL", "BLAS_OPEN", "BLAS_ATLAS", "BLAS_APPLE")
                     if features.is_enabled(name)), "?")
        return "oneDNN (FullyConnected)" if features.is_enabled("MKLDNN") else f"{blas} BLAS (FullyConnected)"

    def gemm_step_probe(self, *, products, rounds: int = 1):
        """``products`` as FullyConnected operators (the library the step's layers run), each an m x k data and an
        n x k weight (FullyConnected's own layout, whatever the transposes the floor's operands have), bound once as
        one symbol group so that one ``forward`` runs them all, once a round (the engine queues the rounds; each
        writes the same outputs, so each waits for the one before)."""
        rng = onp.random.default_rng(0)
        outputs, arrays = [], {}
        for i, p in enumerate(products):
            outputs.append(mx.sym.FullyConnected(mx.sym.var(f"x{i}"), mx.sym.var(f"w{i}"), no_bias=True,
                                                 num_hidden=p["n"]))
            arrays[f"x{i}"] = mx.nd.array(rng.standard_normal((p["m"], p["k"])), ctx=_CTX, dtype="float32")
            arrays[f"w{i}"] = mx.nd.array(rng.standard_normal((p["n"], p["k"])), ctx=_CTX, dtype="float32")
        executor = mx.sym.Group(outputs).bind(_CTX, arrays, grad_req="null")

        def run():
            for _ in range(rounds):
                executor.forward(is_train=False)
            mx.nd.waitall()
            return executor.outputs
        return run

    def noise_probe(self, *, batch_size: int):
        """The concise model's dropout (ByteDropout with its bytes, or Gluon's Dropout; MXNet's global generator,
        which the backend reseeds before each of its own draws) on every hidden layer's (batch, width) array in
        training mode, hybridized in compiled mode."""
        blocks, kinds = [], set()
        for w, p in zip(self.model.hiddens, self.model.dropouts):
            if 0 < p < 1:
                block = ByteDropout(p, w) if ByteDropout.applies(p, w) else nn.Dropout(p)
                block.initialize(ctx=_CTX)
                if self.train.mode == "compiled":
                    block.hybridize(static_alloc=True, static_shape=True)
                blocks.append((block, np.ones((batch_size, w))))
                kinds.add(f"{block.bits} mt19937 bit(s) an element (ByteDropout: randint bytes, a table)"
                          if isinstance(block, ByteDropout) else "Gluon Dropout (MXNet's CPU sampler)")

        def draw():
            with autograd.train_mode():
                outputs = [block(x, block.draw(batch_size).as_np_ndarray()) if isinstance(block, ByteDropout)
                           else block(x) for block, x in blocks]
            for out in outputs:
                out.wait_to_read()
        return ", ".join(sorted(kinds)), draw

    def synchronize(self) -> None:
        mx.nd.waitall()
