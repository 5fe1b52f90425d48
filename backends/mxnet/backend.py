"""The MXNet backend, stock tier: Gluon as its documentation and D2L teach it.

- Model: ``backends.mxnet.model`` (D2L's ``nn.Dense``/``nn.Dropout`` chain for ``concise``, the section's
  ``dropout_layer`` for ``scratch``); the loss is softmax cross-entropy written with np ops (``model.cross_entropy``:
  Gluon's ``SoftmaxCrossEntropyLoss`` runs a biased oneDNN log-softmax), averaged over the batch.
- ``eager`` = imperative Gluon; ``compiled`` = ``hybridize(static_alloc=True, static_shape=True)`` on every graph.
- Training: D2L's loop: ``autograd.record()``, ``loss.backward()``, then
  ``gluon.Trainer(params, "sgd", {"learning_rate": lr, "wd": wd})`` with ``wd_mult = 0`` on the biases (kernels
  only decayed) and ``trainer.step(1)``: the loss is already the batch mean, so the Trainer's rescale by the batch
  size is 1 (D2L's ``step(1)`` on a mean loss). Each batch of the shared ``EpochBatches`` is copied to MXNet as it
  comes; the epoch's metrics stay on the MXNet side and are read once at its end.
- MXNet's default engine: nothing is set beyond the harness's thread counts.

The harness's parts (both tiers): the shared init (``set_params``), the explicit training flag (every training
graph has its noise built in; ``autograd.train_mode()`` for Gluon's Dropout outside ``record``), injected masks, and
the backend's own noise stream: MXNet has only a global generator per device (``mx.random.seed`` and
``npx.random.seed`` are the same call), so the backend owns a NumPy generator seeded with ``noise_seed(seed)`` and
reseeds MXNet's generator from it at the start of every call that draws noise; a backend's noise then depends on
its own calls only, and eager and compiled draw the same stream.

Threads: MXNet reads OMP_NUM_THREADS once, when libmxnet loads; the worker sets it before the import. There is no
Python API to change it later, so ``threads`` is checked against the environment and a mismatch is reported.
"""
from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence

import numpy as onp
import mxnet as mx
from mxnet import autograd, gluon, np, npx

from backends import contract, registry
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics, Params
from backends.mxnet import model as mlp
from backends.mxnet.model import CTX


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

    # --- building ------------------------------------------------------------------------------------------------
    def _graph(self, block):
        if self._compiled:
            block.hybridize(static_alloc=True, static_shape=True)
        return block

    def build(self, *, seed: int, params: Mapping[str, onp.ndarray] | None = None) -> None:
        self.denses = mlp.dense_layers(self.model.layer_sizes)
        self._eval_net = mlp.noise_free(self.denses)
        mx.random.seed(int(seed))  # the framework's own init draws from MXNet's global generator
        self._eval_net.initialize(ctx=CTX)  # D2L: initialize() = init.Uniform(0.07) weights, zero biases
        if params is not None:
            self.set_params(params=params)
        self._make_updater()
        self._noises, self._train_net = self._training_net()
        self._graph(self._eval_net)
        self._graph(self._train_net)
        # per example; np ops, not Gluon's SoftmaxCrossEntropyLoss, whose oneDNN log-softmax is biased
        self._loss = self._graph(mlp.SoftmaxCrossEntropy())
        self._lazy: dict[str, gluon.HybridBlock] = {}
        self._noise_rng = onp.random.default_rng(contract.noise_seed(seed))
        npx.random.seed(contract.noise_seed(seed))

    def _make_updater(self) -> None:
        """D2L's ``gluon.Trainer`` with plain SGD; weight decay on the kernels only (``wd_mult = 0`` on biases)."""
        for dense in self.denses:
            dense.bias.wd_mult = 0.0
        self._trainer = gluon.Trainer(self._eval_net.collect_params(), "sgd",
                                      {"learning_rate": self.train.lr, "wd": self.train.weight_decay})

    def _update(self) -> None:
        """One SGD step from the gradients of a mean loss: the Trainer rescales by 1 / 1."""
        self._trainer.step(1)

    def _training_net(self):
        """(the hidden layers' noise blocks or None, the training graph): D2L's concise model for ``concise``
        dropout, the section's ``dropout_layer`` for ``scratch``; the other kinds are noise blocks of their own."""
        model = self.model
        if model.noise == "dropconnect":
            return None, mlp.MLP(self.denses, dropconnect=model.dropouts)
        if model.noise == "dropout":
            net = (mlp.DropoutMLP if model.impl == "concise" else mlp.DropoutMLPScratch)(self.denses, model.dropouts)
            return net.noises, net
        noises = [mlp.Noise(model.noise, p) for p in model.dropouts]
        return noises, mlp.MLP(self.denses, noises)

    def _lazy_graph(self, key: str):
        """Graphs that only the injected-mask and probing calls need, built on first use."""
        if key not in self._lazy:
            dropconnect = self.model.dropouts if self.model.noise == "dropconnect" else None
            if key == "inject":
                noises = None if dropconnect else [mlp.Noise(self.model.noise, p) for p in self.model.dropouts]
                block = mlp.MLP(self.denses, noises, dropconnect=dropconnect, inject=True)
                self._lazy["inject_noises"] = noises
            elif key == "probe_inject":
                self._lazy_graph("inject")
                block = mlp.MLP(self.denses, self._lazy["inject_noises"], dropconnect=dropconnect, inject=True,
                                probe=True)
            elif key == "probe_native":
                block = mlp.MLP(self.denses, self._noises, dropconnect=dropconnect, probe=True)
            elif key == "probe_eval":
                block = mlp.MLP(self.denses, None, probe=True)
            else:
                raise KeyError(key)
            self._lazy[key] = self._graph(block)
        return self._lazy[key]

    def _native_draws(self, batch_size: int) -> list:
        """The inputs a training graph takes besides x when it draws its own noise: none (Gluon's layers and the
        section's ``dropout_layer`` draw inside the graph)."""
        return []

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

    def _record(self, net, xb, yb, draws):
        """D2L's step before the update: the batch's mean loss under ``autograd.record()``, then ``backward``.
        Returns (mean loss, correct count) as MXNet scalars."""
        with autograd.record():
            logits = net(xb, *draws)
            loss = self._loss(logits, yb).mean()
        loss.backward()
        return loss, mlp.correct_count(mx, logits, yb)

    def _train_pass(self, x, y, masks):
        """Forward and backward of one batch in training mode, on its own noise or the injected ``masks``."""
        if masks is None:
            self._reseed()
            net, draws = self._train_net, self._native_draws(len(x))
        else:
            net, draws = self._lazy_graph("inject"), self._draws(masks, len(x))
        return self._record(net, self._x(x), self._y(y), draws)

    def loss_and_grads(self, *, x, y, masks=None) -> tuple[float, Params]:
        loss, _ = self._train_pass(x, y, masks)
        grads: Params = {}
        for i, dense in enumerate(self.denses):
            grads[f"dense_{i}/kernel"] = onp.ascontiguousarray(dense.weight.grad().asnumpy().T, dtype=onp.float32)
            grads[f"dense_{i}/bias"] = onp.array(dense.bias.grad().asnumpy(), dtype=onp.float32)
        return float(loss.item()), grads

    def train_step(self, *, x, y, masks=None) -> float:
        loss, _ = self._train_pass(x, y, masks)
        self._update()
        return float(loss.item())

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        """D2L's loop over the shared batches: each batch copied to MXNet, recorded, backward, ``trainer.step``."""
        self._reseed()
        losses, corrects, sizes = [], [], []
        for x, y in batches:
            loss, correct = self._record(self._train_net, self._x(x), self._y(y), self._native_draws(len(y)))
            self._update()
            losses.append(loss)
            corrects.append(correct)
            sizes.append(len(y))
        stats = np.stack([np.stack(losses), np.stack(corrects)]).asnumpy().astype(onp.float64)  # waits for the epoch
        n = float(sum(sizes))
        return EpochMetrics(loss=float(stats[0] @ onp.asarray(sizes, dtype=onp.float64)) / n,
                            acc=float(stats[1].sum()) / n)

    def evaluate(self, *, x, y) -> EvalMetrics:
        loss_sum, correct = 0.0, 0
        with autograd.predict_mode():
            for start in range(0, len(x), contract.EVAL_CHUNK):
                stop = start + contract.EVAL_CHUNK
                logits = self._eval_net(self._x(x[start:stop]))
                losses = self._loss(logits, self._y(y[start:stop]))
                loss_sum += float(losses.asnumpy().astype(onp.float64).sum())
                correct += int((logits.asnumpy().argmax(axis=1) == onp.asarray(y[start:stop])).sum())
        return EvalMetrics(loss=loss_sum / len(x), acc=correct / len(x))

    def activations(self, *, x, train, masks=None) -> dict[str, onp.ndarray]:
        xb = self._x(x)
        if not train:
            with autograd.predict_mode():
                outputs = self._lazy_graph("probe_eval")(xb)
        else:
            with autograd.train_mode():  # concise dropout: the same noise blocks the training graph uses
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

    def synchronize(self) -> None:
        mx.nd.waitall()
