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


def rates(name: str, p1: float, p2: float, noise: str = "dropout", **train: Any) -> Variant:
    """A variant that sets the two hidden layers' noise rates (and optionally the noise kind and train fields)."""
    model: dict[str, Any] = {"dropouts": (p1, p2)}
    if noise != "dropout":
        model["noise"] = noise
    return Variant(name, model=model, train=train)


SEEDS = (0, 1, 2)  # the comparisons' default; --seeds overrides
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)  # a decade grid: negligible, mild, strong for SGD lr 0.1 over 10 epochs
# Additive noise's sigma. Dropout with p = 0.5 adds, to every unit, zero-mean noise of std sqrt(p/(1-p)) |h| = |h|,
# and the hidden activations' RMS in the trained D2L network is about 0.3-0.6 (the report prints the measured value
# from its activation probe): sigma 0.5 injects about dropout's noise level, sigma 0.1 a fifth of it.
ADDITIVE_SIGMAS = (0.1, 0.5)

CATALOG: dict[str, Entry] = {
    entry.name: entry
    for entry in (
        Entry("d2l", "the section's run: 784-256-256-10 MLP, dropout (0.5, 0.5), SGD lr 0.1, batch 256, 10 epochs"),
        Entry("dropout-swap", "ex. 1: dropout rates (p1, p2) = (0.5, 0.5), (0.2, 0.5) vs (0.5, 0.2), (0.1, 0.9) vs "
              "(0.9, 0.1), (0, 0); final accuracy over seeds",
              variants=(rates("0.5-0.5", 0.5, 0.5), rates("0.2-0.5", 0.2, 0.5), rates("0.5-0.2", 0.5, 0.2),
                        rates("0.1-0.9", 0.1, 0.9), rates("0.9-0.1", 0.9, 0.1), rates("0-0", 0.0, 0.0)),
              seeds=SEEDS, analysis="dropout_swap"),
        Entry("long-training", "ex. 2: dropout (0.5, 0.5) vs none for 50 epochs; train (noise off) and test curves "
              "and the generalisation gap per epoch",
              variants=(rates("dropout-0.5", 0.5, 0.5), rates("none", 0.0, 0.0)), seeds=SEEDS,
              train={"epochs": 50}, probes=("train_eval",), analysis="long_training"),
        Entry("activation-variance", "ex. 3: variance of each hidden layer's activations before/after the noise, "
              "train and eval mode, every epoch, dropout vs none",
              variants=(rates("dropout-0.5", 0.5, 0.5), rates("none", 0.0, 0.0)), seeds=SEEDS,
              probes=("activation_variance",), analysis="activation_variance"),
        Entry("test-time-dropout", "ex. 4: after training with dropout: test accuracy with noise off, one noisy "
              "pass, Monte-Carlo averages of N noisy passes, and their spread",
              variants=(rates("dropout-0.5", 0.5, 0.5),), seeds=SEEDS, probes=("test_time_noise",),
              analysis="test_time_dropout"),
        Entry("dropout-vs-weight-decay", "ex. 5: none, dropout (0.5, 0.5), weight decay 1e-4/1e-3/1e-2, and both; "
              "are the effects additive?",
              variants=(rates("none", 0.0, 0.0), rates("dropout-0.5", 0.5, 0.5),
                        *(rates(f"wd-{wd:g}", 0.0, 0.0, weight_decay=wd) for wd in WEIGHT_DECAYS),
                        *(rates(f"dropout+wd-{wd:g}", 0.5, 0.5, weight_decay=wd) for wd in WEIGHT_DECAYS)),
              seeds=SEEDS, analysis="dropout_vs_weight_decay"),
        Entry("dropconnect", "ex. 6: DropConnect (masks on weights) vs dropout (masks on activations) at rates "
              "(0.5, 0.5) and (0.2, 0.2), and none",
              variants=(rates("none", 0.0, 0.0), rates("dropout-0.5", 0.5, 0.5),
                        rates("dropconnect-0.5", 0.5, 0.5, noise="dropconnect"), rates("dropout-0.2", 0.2, 0.2),
                        rates("dropconnect-0.2", 0.2, 0.2, noise="dropconnect")),
              seeds=SEEDS, analysis="dropconnect"),
        Entry("noise-injection", "ex. 7: dropout (0.5, 0.5) vs Gaussian multiplicative noise of the same variance "
              "vs additive Gaussian noise (sigma 0.1, 0.5) vs none",
              variants=(rates("none", 0.0, 0.0), rates("dropout-0.5", 0.5, 0.5),
                        rates("gaussian-0.5", 0.5, 0.5, noise="gaussian"),
                        *(rates(f"additive-{s:g}", s, s, noise="additive") for s in ADDITIVE_SIGMAS)),
              seeds=SEEDS, probes=("activation_variance",), analysis="noise_injection"),
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
