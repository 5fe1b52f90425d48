"""One rung of the ladder for one backend x tier x impl x mode x noise x device: what it builds and what it is run
with."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from backends.contract.spec import ModelSpec, TrainSpec


@dataclass(frozen=True)
class Case:
    rung: str
    backend: str
    impl: str  # "concise", "scratch", or "both" (concise == scratch)
    mode: str
    noise: str  # the noise kind the rung runs, "none" where it runs without noise, or "gaussian+additive"
    run: Callable[..., list] = field(repr=False, compare=False)
    device: str = "cpu"
    weight_decay: float = 0.0
    steps: int = 20
    tuning: str = "stock"

    @property
    def id(self) -> str:
        decay = f"-wd{self.weight_decay:g}" if self.weight_decay else ""
        return f"{self.rung}-{self.backend}-{self.tuning}-{self.mode}-{self.impl}-{self.noise}{decay}"

    def model(self, **fields: Any) -> ModelSpec:
        base = {"impl": self.impl if self.impl != "both" else "concise"}
        if self.noise in ("dropout", "dropconnect", "gaussian", "additive"):
            base["noise"] = self.noise
        return ModelSpec(**{**base, **fields})

    def train(self, **fields: Any) -> TrainSpec:
        return TrainSpec(**{"mode": self.mode, "device": self.device, "tuning": self.tuning, **fields})

    def __call__(self, make, fashion) -> list:
        """Run the rung: ``make`` builds backends (``BackendFactory``), ``fashion`` is real Fashion-MNIST."""
        return self.run(self, make, fashion)
