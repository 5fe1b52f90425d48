"""What an exercise file declares: its catalog entry (variants, seeds, defaults, probes) and its report's analysis."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from experiments.running.plan import Variant

SEEDS = (0, 1, 2)  # the comparisons' default; --seeds overrides


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    number: int  # the exercise's number in the section (0: the section's own run); the catalog's order
    variants: tuple[Variant, ...] = (Variant("d2l"),)
    seeds: tuple[int, ...] = (0,)
    model: Mapping[str, Any] = field(default_factory=dict)  # defaults this experiment changes from D2L's
    train: Mapping[str, Any] = field(default_factory=dict)
    probes: tuple[str, ...] = ()  # names in experiments.exercises.probes.PROBES
    analysis: Callable[..., list[str]] | None = None  # Run -> the report's sections (and its plots)


def rates(name: str, p1: float, p2: float, noise: str = "dropout", **train: Any) -> Variant:
    """A variant that sets the two hidden layers' noise rates (and optionally the noise kind and train fields)."""
    model: dict[str, Any] = {"dropouts": (p1, p2)}
    if noise != "dropout":
        model["noise"] = noise
    return Variant(name, model=model, train=train)
