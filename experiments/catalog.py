"""Named experiments: ``d2l`` (the section's run, the default) and one per exercise, found in
``experiments/exercises/`` (every module there that defines ``ENTRY``), in the order of the section's numbering."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Mapping

from backends.contract.spec import ModelSpec, TrainSpec
from experiments import exercises
from experiments.entry import Entry
from experiments.running.plan import Experiment


class CatalogError(ValueError):
    """Unknown experiment, or a flag that fights an experiment's own variants; one line naming the fix."""


def discover() -> dict[str, Entry]:
    entries = []
    for module_info in pkgutil.iter_modules(exercises.__path__):
        module = importlib.import_module(f"{exercises.__name__}.{module_info.name}")
        entry = getattr(module, "ENTRY", None)
        if isinstance(entry, Entry):
            entries.append(entry)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise CatalogError(f"two exercise files declare the same experiment name: {sorted(names)}")
    return {entry.name: entry for entry in sorted(entries, key=lambda e: (e.number, e.name))}


CATALOG: dict[str, Entry] = discover()


def build(name: str, *, backends: list[str], modes: tuple[str, ...] = ("eager",),
          tunings: tuple[str, ...] = ("stock",), seeds: tuple[int, ...] | None = None,
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
                      seeds=tuple(seeds) if seeds else entry.seeds, modes=modes, tunings=tunings, probes=entry.probes,
                      base_model=base_model, base_train=base_train)
