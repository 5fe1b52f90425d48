"""What a backend is asked to build and train: the model and trainer specs, as frozen and validated dataclasses.

Plain Python, so that every interpreter imports it (the MXNet venv pins numpy 1.23). A spec that was built is a valid
spec: every check runs in ``__post_init__`` and raises ``SpecError`` with a message that names the field and the
allowed range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

IMPLS = ("concise", "scratch")
INITS = ("shared", "framework")
MODES = ("eager", "compiled")
DEVICES = ("cpu", "gpu")
# stock: the framework's public API as its own documentation and D2L teach it; tuned: this project's same-law speed
# paths (packed masks, fused steps, other GEMM routes, bound graphs), held to the same parity ladder.
TUNINGS = ("stock", "tuned")

# Noise kinds, applied at every hidden layer i with that layer's rate p_i (``ModelSpec.dropouts[i]``).
# The injected ``masks`` of the Backend contract hold, per hidden layer, exactly the random draw named here.
NOISE_KINDS = {
    "dropout": "inverted dropout on hidden activations: h * m / (1 - p), m = (u > p), u ~ U[0, 1); p=0 identity, p=1 0",
    "dropconnect": "inverted dropout on the weights that read hidden layer i: W * m / (1 - p), one mask per step",
    "gaussian": "multiplicative Gaussian noise h * (1 + sqrt(p / (1 - p)) * z), z ~ N(0, 1): dropout's variance",
    "additive": "additive Gaussian noise h + p * z, z ~ N(0, 1): the rate is the noise's standard deviation",
}


class SpecError(ValueError):
    """An invalid hyperparameter; the message is one line naming the field and the allowed values."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def _positive_int(name: str, value: Any) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """The D2L dropout MLP: num_inputs -> hiddens[0] -> ... -> num_outputs, ReLU, noise after each hidden layer."""

    num_inputs: int = 784
    hiddens: tuple[int, ...] = (256, 256)
    num_outputs: int = 10
    dropouts: tuple[float, ...] = (0.5, 0.5)
    impl: str = "concise"
    noise: str = "dropout"
    init: str = "shared"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hiddens", tuple(self.hiddens))
        object.__setattr__(self, "dropouts", tuple(float(p) for p in self.dropouts))
        _positive_int("num_inputs", self.num_inputs)
        _positive_int("num_outputs", self.num_outputs)
        require(len(self.hiddens) > 0, "hiddens must name at least one hidden layer, e.g. --hiddens 256 256")
        for i, width in enumerate(self.hiddens):
            _positive_int(f"hiddens[{i}] (hidden layer width)", width)
        require(len(self.dropouts) == len(self.hiddens),
                 f"dropouts needs one probability per hidden layer ({len(self.hiddens)}), got {len(self.dropouts)}")
        for i, p in enumerate(self.dropouts):
            require(math.isfinite(p) and 0.0 <= p <= 1.0,
                     f"dropouts[{i}] must be a probability in [0, 1], got {p}")
            if self.noise == "gaussian":
                require(p < 1.0, f"dropouts[{i}] must be in [0, 1) for gaussian noise (variance p/(1-p)), got {p}")
        require(self.impl in IMPLS, f"impl must be one of {', '.join(IMPLS)}, got {self.impl!r}")
        require(self.noise in NOISE_KINDS, f"noise must be one of {', '.join(NOISE_KINDS)}, got {self.noise!r}")
        require(self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}")

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (self.num_inputs, *self.hiddens, self.num_outputs)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The canonical layout: ``dense_i/kernel`` is (in, out), ``dense_i/bias`` is (out,)."""
        sizes = self.layer_sizes
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            shapes[f"dense_{i}/kernel"] = (fan_in, fan_out)
            shapes[f"dense_{i}/bias"] = (fan_out,)
        return shapes

    def num_params(self) -> int:
        return sum(math.prod(shape) for shape in self.param_shapes().values())


@dataclass(frozen=True)
class TrainSpec:
    """D2L's trainer: plain minibatch SGD on the mean softmax cross-entropy.

    Weight decay means the same in every backend: the gradient of each kernel gains ``weight_decay * W`` before the
    SGD update; biases are not decayed. The reported losses are the data loss alone.
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 0.0
    seed: int = 0
    train_limit: int | None = None
    mode: str = "eager"
    device: str = "cpu"
    tuning: str = "stock"

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        require(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
                 f"lr must be a positive number, got {self.lr!r}")
        require(isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                 and self.weight_decay >= 0, f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
                 f"seed must be an integer >= 0, got {self.seed!r}")
        if self.train_limit is not None:
            _positive_int("train_limit", self.train_limit)
        require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        require(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        require(self.tuning in TUNINGS, f"tuning must be one of {', '.join(TUNINGS)}, got {self.tuning!r}")
