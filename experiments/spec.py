"""The contract: what a run is, as frozen and validated dataclasses.

Everything here is plain Python so that the worker can import it under any interpreter (the MXNet venv pins numpy
1.23). A spec that was built is a valid spec: every check runs in ``__post_init__`` and raises ``SpecError`` with a
message that names the field and the allowed range.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

IMPLS = ("concise", "scratch")
INITS = ("shared", "framework")
MODES = ("eager", "compiled")
DEVICES = ("cpu", "gpu")

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


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def _positive_int(name: str, value: Any) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
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
        _require(len(self.hiddens) > 0, "hiddens must name at least one hidden layer, e.g. --hiddens 256 256")
        for i, width in enumerate(self.hiddens):
            _positive_int(f"hiddens[{i}] (hidden layer width)", width)
        _require(len(self.dropouts) == len(self.hiddens),
                 f"dropouts needs one probability per hidden layer ({len(self.hiddens)}), got {len(self.dropouts)}")
        for i, p in enumerate(self.dropouts):
            _require(math.isfinite(p) and 0.0 <= p <= 1.0,
                     f"dropouts[{i}] must be a probability in [0, 1], got {p}")
            if self.noise == "gaussian":
                _require(p < 1.0, f"dropouts[{i}] must be in [0, 1) for gaussian noise (variance p/(1-p)), got {p}")
        _require(self.impl in IMPLS, f"impl must be one of {', '.join(IMPLS)}, got {self.impl!r}")
        _require(self.noise in NOISE_KINDS, f"noise must be one of {', '.join(NOISE_KINDS)}, got {self.noise!r}")
        _require(self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}")

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

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _require(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
                 f"lr must be a positive number, got {self.lr!r}")
        _require(isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                 and self.weight_decay >= 0, f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        _require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
                 f"seed must be an integer >= 0, got {self.seed!r}")
        if self.train_limit is not None:
            _positive_int("train_limit", self.train_limit)
        _require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        _require(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a name, the spec fields it sets, and the parameters shown as CSV columns."""

    name: str
    model: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.name) and "," not in self.name, f"variant name must be non-empty, got {self.name!r}")
        model_fields = {f.name for f in dataclasses.fields(ModelSpec)}
        train_fields = {f.name for f in dataclasses.fields(TrainSpec)} - {"seed", "mode", "device"}
        for key in self.model:
            _require(key in model_fields, f"variant {self.name}: unknown model field {key!r}")
        for key in self.train:
            _require(key in train_fields, f"variant {self.name}: unknown train field {key!r}")
        object.__setattr__(self, "model", dict(self.model))
        object.__setattr__(self, "train", dict(self.train))


@dataclass(frozen=True)
class Job:
    """One worker process: a backend trains one variant with one seed in one mode."""

    backend: str
    variant: str
    model: ModelSpec
    train: TrainSpec
    experiment: str = "d2l"
    probes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return (f"{self.backend}-{self.model.impl}-{self.train.mode}-{self.train.device}-{self.variant}"
                f"-seed{self.train.seed}")

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "variant": self.variant, "experiment": self.experiment,
                "probes": list(self.probes), "model": dataclasses.asdict(self.model),
                "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Job":
        model = dict(data["model"])
        model["hiddens"] = tuple(model["hiddens"])
        model["dropouts"] = tuple(model["dropouts"])
        return cls(backend=data["backend"], variant=data["variant"], experiment=data.get("experiment", "d2l"),
                   probes=tuple(data.get("probes", ())), model=ModelSpec(**model), train=TrainSpec(**data["train"]))


@dataclass(frozen=True)
class Experiment:
    """A named set of variants, run on every chosen backend and mode with every seed."""

    name: str
    description: str
    variants: tuple[Variant, ...] = (Variant("d2l"),)
    backends: tuple[str, ...] = ("numpy",)
    seeds: tuple[int, ...] = (0,)
    modes: tuple[str, ...] = ("eager",)
    probes: tuple[str, ...] = ()
    base_model: ModelSpec = field(default_factory=ModelSpec)
    base_train: TrainSpec = field(default_factory=TrainSpec)

    def __post_init__(self) -> None:
        for attr in ("variants", "backends", "seeds", "modes", "probes"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        _require(len(self.variants) > 0, f"experiment {self.name} has no variants")
        names = [v.name for v in self.variants]
        _require(len(set(names)) == len(names), f"experiment {self.name}: variant names repeat: {names}")
        _require(len(self.backends) > 0, "choose at least one backend, e.g. --backend numpy")
        _require(len(self.seeds) > 0, "choose at least one seed, e.g. --seeds 0")
        for seed in self.seeds:
            _require(isinstance(seed, int) and seed >= 0, f"seeds must be integers >= 0, got {seed!r}")
        for mode in self.modes:
            _require(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        for variant in self.variants:  # building the specs validates every variant now, not in a worker later
            self.variant_specs(variant, seed=self.seeds[0], mode=self.modes[0])

    def variant_specs(self, variant: Variant, *, seed: int, mode: str) -> tuple[ModelSpec, TrainSpec]:
        model = dataclasses.replace(self.base_model, **variant.model)
        train = dataclasses.replace(self.base_train, **variant.train, seed=seed, mode=mode)
        return model, train

    def jobs(self, offered_modes=None) -> list[Job]:
        """Backend-major order, so that one framework's jobs run back to back (warm disk caches, fair timings).

        ``offered_modes(backend)`` (optional) names the modes a backend has; the others are skipped for it."""
        jobs = []
        for backend in self.backends:
            modes = [m for m in self.modes if offered_modes is None or m in offered_modes(backend)]
            for mode in modes:
                for variant in self.variants:
                    for seed in self.seeds:
                        model, train = self.variant_specs(variant, seed=seed, mode=mode)
                        jobs.append(Job(backend=backend, variant=variant.name, model=model, train=train,
                                        experiment=self.name, probes=self.probes))
        return jobs
