"""Named experiments: ``d2l`` (the section's run, the default) and one per exercise, each a declarative entry."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from experiments.spec import Experiment, ModelSpec, SpecError, TrainSpec, Variant


class CatalogError(ValueError):
    """Unknown experiment, or a flag that fights an experiment's own variants; one line naming the fix."""


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    variants: tuple[Variant, ...] = (Variant("d2l"),)
    seeds: tuple[int, ...] = (0,)
    model: Mapping[str, Any] = field(default_factory=dict)  # defaults this experiment changes from D2L's
    train: Mapping[str, Any] = field(default_factory=dict)
    probes: tuple[str, ...] = ()
    analysis: str | None = None  # name of the report writer in experiments.analysis, if any


CATALOG: dict[str, Entry] = {
    entry.name: entry
    for entry in (
        Entry("d2l", "the section's run: 784-256-256-10 MLP, dropout (0.5, 0.5), SGD lr 0.1, batch 256, 10 epochs"),
    )
}


def build(name: str, *, backends: list[str], modes: tuple[str, ...] = ("eager",), seeds: tuple[int, ...] | None = None,
          model_overrides: Mapping[str, Any] | None = None,
          train_overrides: Mapping[str, Any] | None = None) -> Experiment:
    """The experiment with the user's flags applied on top of its defaults. A flag that sets a field which the
    experiment's variants vary is refused rather than silently ignored."""
    if name not in CATALOG:
        raise CatalogError(f"unknown experiment {name!r}; choose from {', '.join(CATALOG)} "
                           f"(python harness.py --list describes them)")
    entry = CATALOG[name]
    model_overrides, train_overrides = dict(model_overrides or {}), dict(train_overrides or {})
    for variant in entry.variants:
        for overrides, varied in ((model_overrides, variant.model), (train_overrides, variant.train)):
            clash = sorted(set(overrides) & set(varied))
            if clash:
                raise CatalogError(f"experiment {name} varies {', '.join(clash)} itself (variant {variant.name}); "
                                   f"drop the flag for {', '.join(clash)}")
    base_model = dataclasses.replace(ModelSpec(), **{**entry.model, **model_overrides})
    base_train = dataclasses.replace(TrainSpec(), **{**entry.train, **train_overrides})
    return Experiment(name=name, description=entry.description, variants=entry.variants, backends=tuple(backends),
                      seeds=tuple(seeds) if seeds else entry.seeds, modes=modes, probes=entry.probes,
                      base_model=base_model, base_train=base_train)


__all__ = ["CATALOG", "CatalogError", "Entry", "SpecError", "build"]
