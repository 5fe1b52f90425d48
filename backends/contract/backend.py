"""The Backend contract that every framework implements. Framework-free: NumPy in, NumPy out.

A backend never reads files, flags or CSVs. It is built from a ``ModelSpec`` and a ``TrainSpec``, gets NumPy arrays,
and returns NumPy arrays and Python numbers. Every method takes keyword arguments only.

Parameters travel in ONE canonical layout (``ModelSpec.param_shapes``): ``dense_i/kernel`` is (in, out) and
``dense_i/bias`` is (out,), float32. Frameworks that store (out, in) transpose at the edge.

``masks`` injects the noise so that every framework can be checked against the NumPy oracle: a list with one array per
hidden layer, holding the random draw that ``backends.contract.spec.NOISE_KINDS`` names for the model's noise kind
(``noise_shapes`` gives the shapes). When ``masks`` is given, ``concise`` and ``scratch`` must both apply exactly these
draws; when it is None, the backend draws its own (the framework's layer for ``concise`` dropout, the section's
``dropout_layer`` for ``scratch``). Every call that draws its own noise advances the backend's noise RNG, so two
consecutive calls (or training steps) draw different noise, and a backend built twice with the same seed draws the
same noise. p = 0 is an exact identity (D2L's ``u > p`` would drop an element with probability 2**-24); p = 1 gives
zeros, never NaN.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from backends.contract.spec import ModelSpec, TrainSpec

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class Capabilities:
    modes: tuple[str, ...] = ("eager",)
    devices: tuple[str, ...] = ("cpu",)
    noise_kinds: tuple[str, ...] = ("dropout", "dropconnect", "gaussian", "additive")
    supports_masks: bool = True
    distinct_impls: bool = True  # concise (the framework's Dropout layer) and scratch are different code


@dataclass(frozen=True)
class EpochMetrics:
    """Training metrics of one epoch, computed in training mode (noise on), averaged over examples."""

    loss: float
    acc: float


@dataclass(frozen=True)
class EvalMetrics:
    """Exact loss and accuracy over a whole split, in evaluation mode (noise off)."""

    loss: float
    acc: float


@dataclass(frozen=True)
class EpochBatches:
    """One epoch of the shared batch stream: the same batches in the same order for every backend.

    ``x`` and ``y`` are the whole training split and are the same objects every epoch, so that a backend may keep a
    device copy (keyed by ``id(x)``) and gather batches there from ``order``. Iterating yields NumPy batches
    ``(x[idx], y[idx])``; the last, partial batch is kept.
    """

    x: np.ndarray
    y: np.ndarray
    order: np.ndarray
    batch_size: int

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def indices(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.order), self.batch_size):
            yield self.order[start:start + self.batch_size]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for idx in self.indices():
            yield self.x[idx], self.y[idx]


class Backend(abc.ABC):
    """One framework's implementation of the D2L dropout MLP and its trainer. Subclasses are named ``Backend``."""

    name: str = ""
    framework: str = ""  # the importable module whose version is reported
    capabilities = Capabilities()

    def __init__(self, *, model: ModelSpec, train: TrainSpec, threads: int | None = None) -> None:
        if train.mode not in self.capabilities.modes:
            raise ValueError(f"backend {self.name} has no mode {train.mode!r}; it offers "
                             f"{', '.join(self.capabilities.modes)}")
        if train.device not in self.capabilities.devices:
            raise ValueError(f"backend {self.name} cannot run on {train.device}; it offers "
                             f"{', '.join(self.capabilities.devices)}")
        if model.noise not in self.capabilities.noise_kinds:
            raise ValueError(f"backend {self.name} does not implement noise {model.noise!r}")
        self.model = model
        self.train = train
        self.threads = threads

    @classmethod
    def version(cls) -> str:
        """The framework's version string; importing the framework here is allowed (the backend is in use)."""
        import importlib

        return str(getattr(importlib.import_module(cls.framework), "__version__", "unknown"))

    @abc.abstractmethod
    def build(self, *, seed: int, params: Mapping[str, np.ndarray] | None = None) -> None:
        """Create the network. With ``params`` (the ``shared`` init) load them; else use the framework's own
        default initialiser seeded by ``seed``. Seeds the backend's noise RNG with ``noise_seed(seed)``."""

    @abc.abstractmethod
    def get_params(self) -> Params:
        """Canonical layout, float32 NumPy copies."""

    @abc.abstractmethod
    def set_params(self, *, params: Mapping[str, np.ndarray]) -> None:
        """Load canonical-layout parameters; shapes are checked."""

    @abc.abstractmethod
    def forward(self, *, x: np.ndarray, train: bool, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Logits (B, num_outputs). ``train=True`` applies noise (drawn or injected) without updating anything."""

    @abc.abstractmethod
    def loss_and_grads(self, *, x: np.ndarray, y: np.ndarray,
                       masks: Sequence[np.ndarray] | None = None) -> tuple[float, Params]:
        """Mean cross-entropy of one batch in training mode, and its gradient (data loss only, canonical layout)."""

    @abc.abstractmethod
    def train_step(self, *, x: np.ndarray, y: np.ndarray, masks: Sequence[np.ndarray] | None = None) -> float:
        """One SGD step (with weight decay on kernels); returns the batch's mean loss before the update."""

    @abc.abstractmethod
    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        """Train on every batch in order. Must return only after the device has finished (host read or sync)."""

    @abc.abstractmethod
    def evaluate(self, *, x: np.ndarray, y: np.ndarray) -> EvalMetrics:
        """Exact mean loss and accuracy over all of ``x`` with noise off."""

    @abc.abstractmethod
    def activations(self, *, x: np.ndarray, train: bool,
                    masks: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Hidden activations for exercise 3: ``hidden_i/pre_noise`` (after ReLU) and ``hidden_i/post_noise``
        (what the next layer reads; for dropconnect, where the noise is on weights, the same as pre_noise)."""

    def set_matmul_precision(self, *, allow_tf32: bool) -> None:
        """Full float32 matrix products (``allow_tf32=False``) or the device's reduced-precision mode (TF32 on recent
        NVIDIA GPUs), for a backend whose framework has one; call before ``build``. Others compute float32 in
        float32 and ignore it."""

    def matmul_precision(self) -> str:
        """The float32 matrix-multiply precision in force, in the framework's own words."""
        return "float32"

    def synchronize(self) -> None:
        """Wait until queued device work is done; every timer is preceded by this. Host-only backends do nothing."""


def held_operand_shapes(product: Mapping[str, Any]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The shapes of the two arrays a framework holds for a ``probes.gemm_step_probe`` product (m x k @ k x n): (k, m) for
    a transposed first operand (``ta``), else (m, k); (n, k) for a transposed second one (``tb``), else (k, n)."""
    m, k, n = product["m"], product["k"], product["n"]
    return ((k, m) if product["ta"] else (m, k)), ((n, k) if product["tb"] else (k, n))


def check_params(model: ModelSpec, params: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless ``params`` has exactly the canonical names and shapes."""
    expected = model.param_shapes()
    if set(params) != set(expected):
        raise ValueError(f"parameter names differ from the canonical layout: missing "
                         f"{sorted(set(expected) - set(params))}, unexpected {sorted(set(params) - set(expected))}")
    for name, shape in expected.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(f"{name} has shape {tuple(np.shape(params[name]))}, expected {shape}")
