"""D2L's dropout MLP in PyTorch's stock layers: the section's ``dropout_layer``, ``DropoutMLP`` (concise: the
framework's ``nn.Dropout`` in an ``nn.Sequential``) and ``DropoutMLPScratch`` (three ``nn.Linear`` and the section's
``dropout_layer``), and what the other noise kinds (dropconnect, gaussian, additive) and injected masks need.

A model is called as ``net(X, noise, tape)``. ``noise`` is None (noise off) or one entry per hidden layer: ``NATIVE``
(draw with the model's own dropout: ``nn.Dropout``, or ``dropout_layer`` from the backend's generator) or a tensor
holding the draw (a 0/1 keep mask for dropout and dropconnect, in torch's (out, in) layout for the latter; N(0, 1) for
gaussian and additive). ``tape``, if given, collects the hidden activations. With native noise in ``train()`` or none
in ``eval()``, and no tape, each model runs exactly as the section writes it: the concise one is its
``nn.Sequential``, whose ``nn.Dropout`` the module's flag switches on and off; the scratch one calls ``dropout_layer``
in training only. Every other call walks the layers with the noise it is given (``_NoisyMLP._walk``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backends import contract
from backends.contract import ModelSpec

NATIVE = "native"  # a hidden layer's noise entry: draw with the model's own dropout (nn.Dropout / dropout_layer)


def keep_mask(shape, dropout: float, *, generator: torch.Generator | None, device, dtype=torch.float32):
    """D2L's mask ``(rand(X.shape) > dropout).float()``, drawn ON ``device`` (D2L draws it on the CPU: bug B3)."""
    return (torch.rand(shape, generator=generator, device=device, dtype=dtype) > dropout).to(dtype)


def dropout_layer(X: torch.Tensor, dropout: float, *, generator: torch.Generator | None = None,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """The section's ``dropout_layer``: keep where u > p, scale by 1/(1-p); p = 1 gives zeros and p = 0 is the exact
    identity (D2L's ``u > 0`` would drop with probability 2**-24). ``keep`` injects the 0/1 mask instead of drawing."""
    assert 0 <= dropout <= 1
    if dropout == 1:
        return torch.zeros_like(X)
    if dropout == 0:
        return X
    if keep is None:
        keep = keep_mask(X.shape, dropout, generator=generator, device=X.device, dtype=X.dtype)
    return keep * X / (1.0 - dropout)


class _NoisyMLP(nn.Module):
    """The layer walk both implementations share for injected noise, the other noise kinds and the activations tape;
    ``_activation_noise`` is where they differ."""

    relu: nn.ReLU

    def __init__(self, model: ModelSpec) -> None:
        super().__init__()
        self.kind = model.noise
        self.dropouts = tuple(model.dropouts)
        self.num_hidden = len(model.hiddens)

    def linears(self) -> list[nn.Linear]:
        raise NotImplementedError

    def _activation_noise(self, i: int, H: torch.Tensor, entry) -> torch.Tensor:
        raise NotImplementedError

    def _noisy_weight(self, i: int, W: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return W * (keep * contract.keep_scale(self.dropouts[i]))

    def _walk(self, X: torch.Tensor, noise, tape: dict | None) -> torch.Tensor:
        H = X.reshape(X.shape[0], -1)
        for i, linear in enumerate(self.linears()):
            if noise is not None and self.kind == "dropconnect" and i > 0:
                Z = F.linear(H, self._noisy_weight(i - 1, linear.weight, noise[i - 1]), linear.bias)
            else:
                Z = linear(H)
            if i == self.num_hidden:
                return Z
            H = self.relu(Z)
            if tape is not None:
                tape[f"hidden_{i}/pre_noise"] = H
            if noise is not None and self.kind != "dropconnect":
                H = self._activation_noise(i, H, noise[i])
            if tape is not None:
                tape[f"hidden_{i}/post_noise"] = H
        raise AssertionError("unreachable")

    def _other_noise(self, i: int, H: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        p = self.dropouts[i]
        if self.kind == "gaussian":
            return H * (1.0 + contract.gaussian_noise_scale(p) * z)
        return H + contract.additive_noise_scale(p) * z


def _native(noise) -> bool:
    return noise is not None and all(isinstance(entry, str) for entry in noise)


class DropoutMLP(_NoisyMLP):
    """D2L's concise model: ``nn.Sequential(Flatten, Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear)``."""

    def __init__(self, model: ModelSpec, device=None) -> None:
        super().__init__(model)
        sizes = model.layer_sizes
        layers: list[nn.Module] = [nn.Flatten()]
        for i, p in enumerate(model.dropouts):
            layers += [nn.Linear(sizes[i], sizes[i + 1], device=device), nn.ReLU(), nn.Dropout(p)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], device=device))
        self.net = nn.Sequential(*layers)
        self.relu = self.net[2]
        self._linears = [m for m in self.net if isinstance(m, nn.Linear)]
        self._dropout_layers = [m for m in self.net if isinstance(m, nn.Dropout)]

    def linears(self) -> list[nn.Linear]:
        return self._linears

    def forward(self, X: torch.Tensor, noise=None, tape: dict | None = None) -> torch.Tensor:
        if tape is None and (_native(noise) and self.training or noise is None and not self.training):
            return self.net(X)  # the section's model: nn.Dropout on in train(), off in eval()
        return self._walk(X, noise, tape)

    def _activation_noise(self, i, H, entry):
        if self.kind == "dropout":
            if isinstance(entry, str):  # NATIVE: the framework's own layer (the default generator)
                return self._dropout_layers[i](H)
            return H * (entry * contract.keep_scale(self.dropouts[i]))  # injected: bypass nn.Dropout
        return self._other_noise(i, H, entry)


class DropoutMLPScratch(_NoisyMLP):
    """D2L's scratch model: three ``nn.Linear`` and ``dropout_layer`` after each hidden ReLU, in training only."""

    def __init__(self, model: ModelSpec, device=None) -> None:
        super().__init__(model)
        sizes = model.layer_sizes
        self.lins = nn.ModuleList(nn.Linear(a, b, device=device) for a, b in zip(sizes[:-1], sizes[1:]))
        self.relu = nn.ReLU()
        self.generator: torch.Generator | None = None  # set by the backend: its noise stream

    def linears(self) -> list[nn.Linear]:
        return list(self.lins)

    def forward(self, X: torch.Tensor, noise=None, tape: dict | None = None) -> torch.Tensor:
        if tape is None and (_native(noise) and self.training or noise is None and not self.training):
            H = X.reshape((X.shape[0], -1))  # the section's forward, one hidden layer after another
            for i, p in enumerate(self.dropouts):
                H = self.relu(self.lins[i](H))
                if self.training:
                    H = dropout_layer(H, p, generator=self.generator)
            return self.lins[-1](H)
        return self._walk(X, noise, tape)

    def _activation_noise(self, i, H, entry):
        if self.kind == "dropout":
            if isinstance(entry, str):  # NATIVE: the section's dropout_layer, drawing from the backend's generator
                return dropout_layer(H, self.dropouts[i], generator=self.generator)
            return dropout_layer(H, self.dropouts[i], keep=entry)
        return self._other_noise(i, H, entry)

    def _noisy_weight(self, i, W, keep):  # dropconnect is the section's dropout_layer applied to the weights
        return dropout_layer(W, self.dropouts[i], keep=keep)
