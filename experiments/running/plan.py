"""What an experiment runs: variants of the specs, the jobs they expand to, one worker process each.

Plain Python (the worker imports it under the MXNet venv's numpy 1.23). Building an ``Experiment`` validates every
variant's specs, so a bad flag fails before any worker starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from backends.contract.spec import MODES, TUNINGS, ModelSpec, TrainSpec, require


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a name, the spec fields it sets, and the parameters shown as CSV columns."""

    name: str
    model: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(bool(self.name) and "," not in self.name, f"variant name must be non-empty, got {self.name!r}")
        model_fields = {f.name for f in dataclasses.fields(ModelSpec)}
        train_fields = {f.name for f in dataclasses.fields(TrainSpec)} - {"seed", "mode", "device", "tuning"}
        for key in self.model:
            require(key in model_fields, f"variant {self.name}: unknown model field {key!r}")
        for key in self.train:
            require(key in train_fields, f"variant {self.name}: unknown train field {key!r}")
        object.__setattr__(self, "model", dict(self.model))
        object.__setattr__(self, "train", dict(self.train))


@dataclass(frozen=True)
class Job:
    """One worker process: a backend trains one variant with one seed in one mode and tier."""

    backend: str
    variant: str
    model: ModelSpec
    train: TrainSpec
    experiment: str = "d2l"
    probes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return (f"{self.backend}-{self.train.tuning}-{self.model.impl}-{self.train.mode}-{self.train.device}"
                f"-{self.variant}-seed{self.train.seed}")

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
    """A named set of variants, run on every chosen backend, mode and tier with every seed."""

    name: str
    description: str
    variants: tuple[Variant, ...] = (Variant("d2l"),)
    backends: tuple[str, ...] = ("numpy",)
    seeds: tuple[int, ...] = (0,)
    modes: tuple[str, ...] = ("eager",)
    tunings: tuple[str, ...] = ("stock",)
    probes: tuple[str, ...] = ()
    base_model: ModelSpec = field(default_factory=ModelSpec)
    base_train: TrainSpec = field(default_factory=TrainSpec)

    def __post_init__(self) -> None:
        for attr in ("variants", "backends", "seeds", "modes", "tunings", "probes"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        require(len(self.variants) > 0, f"experiment {self.name} has no variants")
        names = [v.name for v in self.variants]
        require(len(set(names)) == len(names), f"experiment {self.name}: variant names repeat: {names}")
        require(len(self.backends) > 0, "choose at least one backend, e.g. --backend numpy")
        require(len(self.seeds) > 0, "choose at least one seed, e.g. --seeds 0")
        for seed in self.seeds:
            require(isinstance(seed, int) and seed >= 0, f"seeds must be integers >= 0, got {seed!r}")
        for mode in self.modes:
            require(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        require(len(self.tunings) > 0, "choose at least one tuning, e.g. --tuning stock")
        for tuning in self.tunings:
            require(tuning in TUNINGS, f"tuning must be one of {', '.join(TUNINGS)}, got {tuning!r}")
        for variant in self.variants:  # building the specs validates every variant now, not in a worker later
            self.variant_specs(variant, seed=self.seeds[0], mode=self.modes[0], tuning=self.tunings[0])

    def settings_text(self) -> str:
        """The settings the jobs run with, as the user's flags left them; what a variant sets is named as such."""
        model, train = self.base_model, self.base_train
        varied = {name for v in self.variants for name in (*v.model, *v.train)}

        def shown(field: str, text: str) -> str:
            return f"{field} per variant" if field in varied else text

        noise = "dropout" if model.noise == "dropout" else f"{model.noise} noise"
        parts = [shown("hiddens", f"{'-'.join(map(str, model.layer_sizes))} MLP"), shown("impl", model.impl),
                 shown("noise", noise), shown("dropouts", f"p ({', '.join(f'{p:g}' for p in model.dropouts)})"),
                 shown("init", f"init {model.init}"), shown("lr", f"SGD lr {train.lr:g}"),
                 shown("weight_decay", f"weight decay {train.weight_decay:g}"),
                 shown("batch_size", f"batch {train.batch_size}"),
                 shown("epochs", f"{train.epochs} epoch{'s' if train.epochs != 1 else ''}"),
                 shown("train_limit", f"the first {train.train_limit:,} training images" if train.train_limit
                       else "all training images")]
        return ", ".join(parts)

    def variant_specs(self, variant: Variant, *, seed: int, mode: str,
                      tuning: str = "stock") -> tuple[ModelSpec, TrainSpec]:
        model = dataclasses.replace(self.base_model, **variant.model)
        train = dataclasses.replace(self.base_train, **variant.train, seed=seed, mode=mode, tuning=tuning)
        return model, train

    def jobs(self, offered_modes=None) -> list[Job]:
        """Backend-major order, so that one framework's jobs run back to back (warm disk caches, fair timings).

        ``offered_modes(backend)`` (optional) names the modes a backend has; the others are skipped for it."""
        jobs = []
        for backend in self.backends:
            modes = [m for m in self.modes if offered_modes is None or m in offered_modes(backend)]
            for tuning in self.tunings:
                for mode in modes:
                    for variant in self.variants:
                        for seed in self.seeds:
                            model, train = self.variant_specs(variant, seed=seed, mode=mode, tuning=tuning)
                            jobs.append(Job(backend=backend, variant=variant.name, model=model, train=train,
                                            experiment=self.name, probes=self.probes))
        return jobs
