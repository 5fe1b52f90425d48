"""The MXNet backend, tuned tier: the stock tier's model and law on faster paths. Each path below says what it
replaces and why; the bench measures them, the parity ladder holds them to the same law as the stock tier.

- ``_choose_engine``: the naive engine where the threads take every core (replaces MXNet's default engine choice).
- ``ByteDropout``: the concise model's dropout at a keep probability j / 2**b (D2L's 0.5), its mask from MXNet's
  random bytes (replaces Gluon's ``nn.Dropout`` there).
- ``_Objective``: the mean loss and the correct count of a batch as one graph (replaces the model and the loss
  called one after the other).
- ``_SGD``: MXNet's own ``sgd_update`` over one buffer of every kernel and one of every bias (replaces
  ``gluon.Trainer``).
- ``_BoundStep``: the compiled epoch's step bound once per batch size with ``Symbol.bind`` (replaces the hybridized
  block called under ``autograd.record`` per batch); the eager epoch gathers its batches from one copy of the split
  on the MXNet side (replaces a host-to-MXNet copy per batch).
"""
from __future__ import annotations

import os
import sys


def _choose_engine() -> None:
    """MXNet's engine, chosen before libmxnet loads (it reads ``MXNET_ENGINE_TYPE`` once); a user's choice stands,
    and where MXNet is already loaded in this process (a worker that ran the stock tier first) it is too late.

    Replaces the default threaded engine where the threads take every core. That engine runs operators on a worker
    thread with its own OpenMP team while the Python thread keeps pushing operators; when the team already has every
    core, the Python thread preempts one of its threads and the whole team waits at the next barrier. The naive
    engine runs each operator on the calling thread. With fewer threads than cores the threaded engine stays: it
    overlaps Python with compute."""
    if "MXNET_ENGINE_TYPE" in os.environ or "mxnet" in sys.modules:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(os.environ.get("OMP_NUM_THREADS") or cores)
    if threads >= cores:
        os.environ["MXNET_ENGINE_TYPE"] = "NaiveEngine"


_choose_engine()

import numpy as onp  # noqa: E402
import mxnet as mx  # noqa: E402  (after the engine choice)
from mxnet import autograd, gluon, np  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from backends import contract  # noqa: E402
from backends.contract import EpochBatches, EpochMetrics  # noqa: E402
from backends.mxnet import backend as stock, model as mlp  # noqa: E402
from backends.mxnet.model import CTX  # noqa: E402


class ByteDropout(gluon.HybridBlock):
    """Gluon's ``Dropout`` at a keep probability j / 2**b (D2L's 0.5: b = 1), its keep mask from random bytes of
    MXNet's own generator: each byte (``randint(0, 256)``: one mt19937 output modulo 256, uniform exactly) holds the
    b-bit fields of 8 / b neighbouring elements, kept when a field is at least 2**b - j (probability j / 2**b
    exactly), and ``take`` expands the bytes through a 256 x (8 / b) table of those decisions already scaled by
    1 / (1 - p); one product applies it. The masks differ from Gluon's, the law does not.

    Replaces Gluon's CPU Dropout, whose sampler draws every element from one of 1,024 mt19937 states through
    ``uniform_real_distribution`` (the pip build has no MKL VSL path); a byte serves eight elements at 0.5. The
    bytes come in as the layer's input (``draw_input``), drawn by ``draw`` before the step: a hybridized graph is
    traced once for every batch size and MXNet has no ``randint_like``, so a draw inside the graph could not take
    its shape from the batch."""

    draw_input = True  # ``model.MLP`` feeds it the next of the graph's extra inputs

    def __init__(self, p: float, width: int, **kwargs) -> None:
        super().__init__(**kwargs)
        bits, kept = contract.dyadic_keep(1.0 - p)
        self.bits, self.width, self.per_byte = bits, int(width), 8 // bits
        if self.width % self.per_byte:
            raise ValueError(f"ByteDropout needs a width that is a multiple of {self.per_byte}, got {width}")
        fields = (onp.arange(256)[:, None] >> (bits * onp.arange(self.per_byte))) & ((1 << bits) - 1)
        table = onp.where(fields >= (1 << bits) - kept, onp.float32(contract.keep_scale(p)), onp.float32(0.0))
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
        return mx.nd.random.randint(0, 256, shape=self.draw_shape(batch_size), dtype="int32", ctx=CTX, out=out)

    def hybrid_forward(self, F, h, draw, table):
        scaled_keep = F.npx.reshape(F.np.take(table, draw, axis=0, mode="clip"), (-2, -5))  # (B, W / 8, 8) -> (B, W)
        return h * scaled_keep


class _Objective(gluon.HybridBlock):
    """Mean softmax cross-entropy of a batch and its correct count in one graph.

    Replaces the training graph and the loss block called one after the other (two cached ops a compiled step, the
    count a third op from Python): one cached op forward, and the symbol that ``_BoundStep`` binds."""

    def __init__(self, net, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = net
        self.loss = mlp.SoftmaxCrossEntropy()

    def hybrid_forward(self, F, x, y, *draws):
        logits = self.net(x, *draws)
        return self.loss(logits, y).mean(), mlp.correct_count(F, logits, y)


def _rehome(params) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """Moves the data and gradient arrays of Gluon ``params`` into two contiguous buffers and makes each parameter's
    arrays views of its slice; returns the two buffers (classic NDArrays: the update operators are ``nd`` operators).

    Gluon has no public API to place a parameter's arrays, so this sets ``Parameter._data``/``_grad`` and marks the
    views for autograd (what ``Parameter.initialize`` does for the arrays it allocates). Every later read goes through
    ``param.data()``/``param.grad()`` (hybridized graphs fetch them on each call), ``set_data`` writes into the view,
    and ``backward`` writes each gradient into its view."""
    size = sum(p.data().size for p in params)
    data, grads = mx.nd.zeros((size,), ctx=CTX), mx.nd.zeros((size,), ctx=CTX)
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

    Replaces ``gluon.Trainer.step``: its per-step Python (stale-gradient checks, updater dispatch) and its update of
    each parameter as its own pair of arrays, aggregated into ``multi_sgd_update``, whose CPU kernel walks every
    array over the largest one's length. The parameters are re-homed into one buffer, kernels first (``_rehome``),
    and ``step`` is two ``sgd_update`` calls, weight decay on the kernels only; bit-identical results.

    ``step_prescaled``: without weight decay the update is ``W += G`` once the gradient already is ``-lr * grad``,
    which the compiled epoch's bound graph gets by seeding its backward pass with ``-lr`` instead of 1
    (``head_gradient``), and ``elemwise_add`` over the buffer is a simpler kernel than ``sgd_update`` (scalar code in
    this SSE2 build). The same update; only its rounding moves (the product by lr happens at the head of the chain
    rule instead of at its end)."""

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

    Replaces the hybridized block (``CachedOp``) called per batch under ``autograd.record``, which builds and then
    walks an autograd graph every step, with the batch gather, label slice and metric copies as more operator calls
    from Python. The bound executor plans forward and backward once; a step is one index copy, the bytes' draws,
    ``forward``, ``backward``, the update and one metrics copy. Same operators, and with the same update the same
    results to the bit (the parity ladder's whole-epoch rungs run this path, with and without weight decay)."""

    def __init__(self, objective, x_all, y_all, batch_size: int, head_gradient: float, byte_dropouts=()) -> None:
        self.byte_dropouts, self.batch_size = list(byte_dropouts), batch_size
        draw_names = [f"draw{i}" for i in range(len(self.byte_dropouts))]
        inputs = [mx.sym.var(name).as_np_ndarray() for name in ("x_all", "y_all", "rows", *draw_names)]
        loss, record = _EpochStep(objective)(*inputs)
        loss = mx.sym.MakeLoss(loss.as_nd_ndarray().reshape((1,)), grad_scale=head_gradient)  # backward's seed
        graph = mx.sym.Group([loss, mx.sym.BlockGrad(record.as_nd_ndarray())])
        self.rows = mx.nd.zeros((batch_size,), ctx=CTX, dtype="int64")
        # bound inputs, drawn in place by every step (allocated without a draw: the stream stays the eager mode's)
        self.draws = [mx.nd.zeros(layer.draw_shape(batch_size), ctx=CTX, dtype="int32")
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
        self.executor = graph.bind(CTX, args=args, args_grad=grads, grad_req=reqs)
        self.record = self.executor.outputs[1]  # bound output arrays: rewritten in place by every forward

    def run(self, rows: onp.ndarray, record_out) -> None:
        self.rows._sync_copyfrom(rows)  # what ``rows[:] = ...`` ends in, without its indexing dispatch
        for layer, draw in zip(self.byte_dropouts, self.draws):
            layer.draw(self.batch_size, out=draw)
        self.executor.forward(is_train=True)
        self.executor.backward()
        self.record.copyto(record_out)


class Backend(stock.Backend):
    """The stock tier with the paths above; the same contract, the same law."""

    def __init__(self, *, model, train, threads=None) -> None:
        super().__init__(model=model, train=train, threads=threads)
        self._data_ref = None  # the host training array whose device copy is cached (kept alive: id() stays valid)
        self._bound_steps: dict[int, _BoundStep] = {}

    def build(self, *, seed: int, params=None) -> None:
        super().build(seed=seed, params=params)
        self._byte_dropouts = [drop for drop in self._noises or () if isinstance(drop, ByteDropout)]
        for drop in self._byte_dropouts:
            drop.initialize(ctx=CTX)  # its table
        self._train_objective = self._graph(_Objective(self._train_net))
        self._bound_steps = {}  # bound to the previous build's parameters

    def _make_updater(self) -> None:
        self._sgd = _SGD(self.denses, lr=self.train.lr, wd=self.train.weight_decay)  # decays the kernels only

    def _update(self) -> None:
        self._sgd.step()

    def _training_net(self):
        """The concise model with ``ByteDropout`` in place of Gluon's Dropout wherever the rate and width allow it
        (an ``MLP`` graph then, the bytes as inputs); every other model is the stock one."""
        noises, net = super()._training_net()
        if not isinstance(net, mlp.DropoutMLP):
            return noises, net
        noises = [ByteDropout(p, width) if isinstance(drop, nn.Dropout) and ByteDropout.applies(p, width) else drop
                  for drop, p, width in zip(noises, self.model.dropouts, self.model.hiddens)]
        if any(isinstance(drop, ByteDropout) for drop in noises):
            return noises, mlp.MLP(self.denses, noises)
        return noises, net

    def _lazy_graph(self, key: str):
        if key != "inject_objective":
            return super()._lazy_graph(key)
        if key not in self._lazy:
            self._lazy[key] = self._graph(_Objective(self._lazy_graph("inject")))
        return self._lazy[key]

    def _native_draws(self, batch_size: int) -> list:
        """The bytes every ByteDropout of the training graph takes for one step of ``batch_size``, in layer order."""
        return [layer.draw(batch_size).as_np_ndarray() for layer in self._byte_dropouts]

    def _train_pass(self, x, y, masks):
        if masks is None:
            self._reseed()
            objective, draws = self._train_objective, self._native_draws(len(x))
        else:
            objective, draws = self._lazy_graph("inject_objective"), self._draws(masks, len(x))
        xb, yb = self._x(x), self._y(y)
        with autograd.record():
            loss, correct = objective(xb, yb, *draws)
        loss.backward()
        return loss, correct

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
            records = mx.nd.zeros((len(starts), 2), ctx=CTX)  # per step: mean loss, correct count
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
        """Imperative Gluon, D2L's loop, on one copy of the split on the MXNet side: per step the batch gathered
        there, the objective under ``autograd.record()``, ``backward``, the update. Replaces a host-to-MXNet copy of
        every batch. Returns the steps' (mean loss, correct count) as (2, steps)."""
        order_dev = np.array(order, dtype=onp.int64)
        losses, corrects = [], []
        objective, sgd = self._train_objective, self._sgd
        # The order is a permutation of the split's rows, so every take mode gathers the same rows. The epoch's
        # labels are gathered in one op and each batch's are a view of them.
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
