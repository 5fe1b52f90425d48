"""The NumPy backend, stock tier: the section's maths in plain NumPy ops, the reference every framework is checked
against.

A training step is ``model.DropoutMLP``'s forward pass (``H @ W + b``, ReLU, ``dropout_layer``), the mean softmax
cross-entropy, the hand-written backward pass and D2L's ``sgd``, each a fresh NumPy array through ``matmul`` and
NumPy's own BLAS. Its own dropout masks are the section's ``uniform > p`` from NumPy's ``Generator.random``
(``model.draw_noise``). ``concise`` and ``scratch`` are the same code (NumPy has no layer library).

``Oracle`` is the same code in float64: the reference of the parity ladder.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from backends import contract, registry
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics, Params
from backends.numpy import model


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, shifted by each row's maximum so that large logits do not overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def sgd(params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float, weight_decay: float) -> None:
    """D2L's minibatch SGD on the mean loss's gradients, in place, with the project's weight decay: each kernel's
    gradient gains ``weight_decay * W``; biases are not decayed."""
    for name, grad in grads.items():
        if weight_decay and name.endswith("kernel"):
            grad = grad + weight_decay * params[name]
        params[name] -= lr * grad


class Backend(contract.Backend):
    name = "numpy"
    framework = "numpy"
    capabilities = registry.capabilities("numpy")
    dtype = np.float32

    def build(self, *, seed: int, params: Mapping[str, np.ndarray] | None = None) -> None:
        self.net = self._network({})
        self.set_params(params=params if params is not None else contract.shared_init(self.model, seed))
        self.rng = np.random.default_rng(contract.noise_seed(seed))

    def _network(self, params: dict[str, np.ndarray]) -> model.DropoutMLPScratch:
        """D2L's model for the spec's impl, over ``params``."""
        net_class = model.DropoutMLP if self.model.impl == "concise" else model.DropoutMLPScratch
        return net_class(self.model, params)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The network's parameters, in this backend's precision (the arrays themselves)."""
        return self.net.params

    def get_params(self) -> Params:
        return {k: v.astype(np.float32, copy=True) for k, v in self.params.items()}

    def set_params(self, *, params: Mapping[str, np.ndarray]) -> None:
        contract.check_params(self.model, params)
        self.net.params = {k: np.array(v, dtype=self.dtype) for k, v in params.items()}

    # --- noise -------------------------------------------------------------------------------------------------
    def _draw(self, batch_size: int) -> list[np.ndarray]:
        """The backend's own draws for one batch, from its noise stream."""
        return model.draw_noise(self.model, batch_size, self.rng)

    def _noise(self, batch_size: int, masks: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        """The batch's draws in this backend's precision: the injected ``masks``, or the backend's own."""
        draws = masks if masks is not None else self._draw(batch_size)
        return [np.asarray(draw, dtype=self.dtype) for draw in draws]

    # --- the contract ------------------------------------------------------------------------------------------
    def _x(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=self.dtype).reshape(len(x), -1)

    def _loss_grads(self, x, y, noise) -> tuple[float, int, Params]:
        """(mean cross-entropy, correct count, gradients) of a batch under the draws ``noise``."""
        tape = model.Tape(noise=noise)
        logits = self.net.forward(self._x(x), noise, tape)
        y = np.asarray(y)
        rows = np.arange(len(y))
        log_probs = log_softmax(logits)
        loss = float(-log_probs[rows, y].mean())
        correct = int((logits.argmax(axis=1) == y).sum())
        grad = np.exp(log_probs)  # d loss / d logits: softmax - one_hot(y), over the batch
        grad[rows, y] -= 1.0
        grad /= len(y)
        return loss, correct, self.net.backward(tape, grad)

    def _step(self, x, y, masks) -> tuple[float, int]:
        """One SGD step on a batch: (its mean loss before the update, its correct count)."""
        loss, correct, grads = self._loss_grads(x, y, self._noise(len(x), masks))
        sgd(self.params, grads, self.train.lr, self.train.weight_decay)
        return loss, correct

    def forward(self, *, x, train, masks=None) -> np.ndarray:
        return self.net.forward(self._x(x), self._noise(len(x), masks) if train else None)

    def loss_and_grads(self, *, x, y, masks=None) -> tuple[float, Params]:
        loss, _, grads = self._loss_grads(x, y, self._noise(len(x), masks))
        return loss, grads

    def train_step(self, *, x, y, masks=None) -> float:
        return self._step(x, y, masks)[0]

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        total_loss, total_correct = 0.0, 0
        for xb, yb in batches:
            loss, correct = self._step(xb, yb, None)
            total_loss += loss * len(yb)
            total_correct += correct
        n = len(batches.order)
        return EpochMetrics(loss=total_loss / n, acc=total_correct / n)

    def evaluate(self, *, x, y) -> EvalMetrics:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), contract.EVAL_CHUNK):
            xc, yc = x[start:start + contract.EVAL_CHUNK], np.asarray(y[start:start + contract.EVAL_CHUNK])
            logits = self.net.forward(self._x(xc))
            loss_sum += float(-log_softmax(logits)[np.arange(len(yc)), yc].sum())
            correct += int((logits.argmax(axis=1) == yc).sum())
        return EvalMetrics(loss=loss_sum / len(x), acc=correct / len(x))

    def activations(self, *, x, train, masks=None) -> dict[str, np.ndarray]:
        tape = model.Tape(noise=self._noise(len(x), masks) if train else None)
        self.net.forward(self._x(x), tape.noise, tape)
        out = {}
        for i in range(len(self.model.hiddens)):
            out[f"hidden_{i}/pre_noise"] = tape.relu[i].astype(np.float32)
            out[f"hidden_{i}/post_noise"] = tape.inputs[i + 1].astype(np.float32)
        return out

    def pre_activations(self, *, x, masks) -> list[np.ndarray]:
        """Each hidden layer's pre-activation (before its ReLU) for ``x`` under the injected ``masks``, in this
        backend's precision (the parity ladder's ReLU-kink count compares float32's with the oracle's)."""
        tape = model.Tape(noise=self._noise(len(x), masks), keep_pre=True)
        self.net.forward(self._x(x), tape.noise, tape)
        return tape.pre


class Oracle(Backend):
    """The same maths in float64: the reference the parity ladder compares float32 frameworks against."""

    name = "numpy-oracle"
    dtype = np.float64

    def get_params(self) -> Params:
        return {k: v.copy() for k, v in self.params.items()}
