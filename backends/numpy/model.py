"""D2L's dropout MLP (section "Dropout") in NumPy: 784 -> 256 -> ReLU -> dropout -> 256 -> ReLU -> dropout -> 10.

NumPy has one mode (eager) and no layer library, so its ``concise`` and ``scratch`` implementations are one code:
``DropoutMLP`` is ``DropoutMLPScratch``, affine layers ``H @ W + b`` with a ReLU and the section's ``dropout_layer``
after each hidden one. NumPy has no autograd either: the backward pass is written by hand, from what the forward pass
keeps on a ``Tape``. Every noise kind is linear in what it acts on once its draw is fixed, so its backward pass is the
same noise applied to the gradient (``noise_backward``): the inverted-dropout scale and the Gaussian factor multiply
the gradient too, the additive term does not reach it.

The noise kinds (``backends.contract.spec.NOISE_KINDS``), at hidden layer i with rate p_i and that layer's draw:
dropout (``dropout_layer`` on the activations), dropconnect (``dropout_layer`` on the kernel that reads the layer),
Gaussian ``h * (1 + s z)`` and additive ``h + s z``, their scales from ``backends.contract.noise``. A draw is what
the contract's ``masks`` hold (a 0/1 keep mask, or N(0, 1)), injected or drawn by ``draw_noise``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from backends import contract
from backends.contract.spec import ModelSpec


def dropout_layer(X: np.ndarray, dropout: float, keep: np.ndarray) -> np.ndarray:
    """The section's ``dropout_layer``: ``keep * X / (1 - p)``, with the keep mask ``keep`` (0/1 or bool, X's shape)
    drawn apart (``draw_noise``: the section's ``uniform > p``) so that the backward pass can apply it again. p = 1
    gives zeros (D2L's branch) and p = 0 is the exact identity."""
    assert 0 <= dropout <= 1
    if dropout == 1:
        return np.zeros_like(X)
    if dropout == 0:
        return X
    return keep * X * contract.keep_scale(dropout)


def relu(X: np.ndarray) -> np.ndarray:
    return np.maximum(X, 0)


def draw_noise(model: ModelSpec, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The model's own draw for one batch, one array per hidden layer in the form ``masks`` takes: keep masks
    ``uniform > p`` (the section's float32 uniforms) for dropout and dropconnect, N(0, 1) for the Gaussian kinds.
    It is the contract's ``draw_masks``, the law of the parity ladder's injected masks."""
    return contract.draw_masks(model, batch_size, rng)


def apply_noise(kind: str, A: np.ndarray, p: float, draw: np.ndarray) -> np.ndarray:
    """Hidden activations ``A`` after the noise ``kind`` at rate p with this layer's ``draw``; dropconnect acts on
    the next kernel instead (``DropoutMLPScratch.kernel``) and leaves them alone."""
    if kind == "dropout":
        return dropout_layer(A, p, draw)
    if kind == "gaussian":
        return A * (1 + contract.gaussian_noise_scale(p) * draw)
    if kind == "additive":
        return A + contract.additive_noise_scale(p) * draw
    return A


def noise_backward(kind: str, dH: np.ndarray, p: float, draw: np.ndarray) -> np.ndarray:
    """The gradient with respect to the activations before the noise, from ``dH``, the gradient after it."""
    if kind == "dropout":
        return dropout_layer(dH, p, draw)
    if kind == "gaussian":
        return dH * (1 + contract.gaussian_noise_scale(p) * draw)
    return dH


@dataclass
class Tape:
    """What the forward pass keeps for the backward pass (and for ``activations``): per layer, what it read
    (``inputs``: the images, then each hidden layer's output after the noise) and the kernel it applied
    (``kernels``: dropconnect's masked one); per hidden layer its pre-activation (``pre``) and its ReLU output
    (``relu``). ``noise`` is the batch's draws (None: noise off)."""

    noise: Sequence[np.ndarray] | None = None
    keep_pre: bool = False  # a forward pass that overwrites its pre-activations copies them only when asked
    inputs: list = field(default_factory=list)
    kernels: list = field(default_factory=list)
    pre: list = field(default_factory=list)
    relu: list = field(default_factory=list)


class DropoutMLPScratch:
    """The MLP over a canonical parameter dict (``dense_i/kernel`` (in, out), ``dense_i/bias``), its arrays used in
    place: ``forward`` with noise off (``noise=None``) or with one draw per hidden layer, ``backward`` by hand."""

    def __init__(self, model: ModelSpec, params: dict[str, np.ndarray]) -> None:
        self.kind = model.noise
        self.dropouts = model.dropouts
        self.num_layers = len(model.layer_sizes) - 1
        self.params = params

    def kernel(self, i: int, noise) -> np.ndarray:
        """Layer i's kernel as the step applies it: for dropconnect, ``dropout_layer`` of it with the draw of the
        hidden layer it reads."""
        W = self.params[f"dense_{i}/kernel"]
        if noise is not None and self.kind == "dropconnect" and i > 0:
            return dropout_layer(W, self.dropouts[i - 1], noise[i - 1])
        return W

    def forward(self, X: np.ndarray, noise: Sequence[np.ndarray] | None = None, tape: Tape | None = None) -> np.ndarray:
        """Logits of a batch ``X`` (flattened to one row an example)."""
        H = X.reshape(len(X), -1)
        for i in range(self.num_layers):
            W = self.kernel(i, noise)
            Z = H @ W + self.params[f"dense_{i}/bias"]
            if tape is not None:
                tape.inputs.append(H)
                tape.kernels.append(W)
            if i == self.num_layers - 1:
                return Z
            A = relu(Z)
            H = A if noise is None else apply_noise(self.kind, A, self.dropouts[i], noise[i])
            if tape is not None:
                tape.pre.append(Z)
                tape.relu.append(A)
        raise AssertionError("the model has an output layer")

    def backward(self, tape: Tape, dZ: np.ndarray) -> dict[str, np.ndarray]:
        """Every parameter's gradient from ``dZ``, the loss's gradient with respect to the logits of the forward pass
        that filled ``tape``."""
        grads: dict[str, np.ndarray] = {}
        noise = tape.noise
        for i in reversed(range(self.num_layers)):
            dW = tape.inputs[i].T @ dZ
            if noise is not None and self.kind == "dropconnect" and i > 0:
                dW = dropout_layer(dW, self.dropouts[i - 1], noise[i - 1])
            grads[f"dense_{i}/kernel"] = dW
            grads[f"dense_{i}/bias"] = dZ.sum(axis=0)
            if i == 0:
                break
            dH = dZ @ tape.kernels[i].T
            dA = dH if noise is None else noise_backward(self.kind, dH, self.dropouts[i - 1], noise[i - 1])
            dZ = dA * (tape.relu[i - 1] > 0)
        return grads


DropoutMLP = DropoutMLPScratch  # NumPy has no Dropout layer of its own: the concise model is the scratch one
