"""Which rung runs for which backend x tier x impl x mode x noise: one list, read by tests/test_parity.py and by
``harness.py parity``.

Every tier (``stock``, ``tuned``) climbs the whole ladder: the tuned paths must keep the stock tier's law. Rungs that
do not depend on the mode (1, 2's forward, 3, 5, 6) run in eager mode, the others in every mode the backend offers.
Rungs that take no implementation run with the first one selected (``concise`` by default); rung 6 needs both, and
runs only where the two are different code (``Capabilities.distinct_impls``: NumPy's are one). A rung's noise is
``-`` where it does not depend on one (and it always runs)."""
from __future__ import annotations

from typing import Sequence

from backends import registry
from backends.contract.spec import IMPLS, NOISE_KINDS, TUNINGS
from experiments.parity import noise_rungs, rungs
from experiments.parity.case import Case

WEIGHT_DECAY = 5e-3
DEFAULT_STEPS = 20
RUNG_NUMBERS = {"layout": "1", "set_params": "1", "framework_init": "1", "forward_eval": "2", "evaluate_exact": "2",
                "loss_grads": "3", "sgd_trajectory": "4", "epoch_no_noise": "epoch", "epoch_noise_on": "epoch",
                "epoch_new_noise": "epoch", "evaluate_chunks": "epoch", "dropout_stats": "5", "p0_p1": "5",
                "seeded_noise": "5", "gaussian_additive_stats": "5", "dropconnect_stats": "5", "concise_scratch": "6"}
RUNGS = tuple(RUNG_NUMBERS)


def cases(backend: str, *, modes: Sequence[str], impls: Sequence[str] = IMPLS,
          noises: Sequence[str] = tuple(NOISE_KINDS), device: str = "cpu", steps: int = DEFAULT_STEPS,
          tunings: Sequence[str] = TUNINGS) -> list[Case]:
    """The ladder for one backend over the tiers (``tunings``) and the modes it offers (``modes``), tier by tier,
    in rung order."""
    return [case for tuning in tunings
            for case in _tier_cases(backend, modes=modes, impls=impls, noises=noises, device=device, steps=steps,
                                    tuning=tuning)]


def _tier_cases(backend: str, *, modes: Sequence[str], impls: Sequence[str], noises: Sequence[str], device: str,
                steps: int, tuning: str) -> list[Case]:
    fixed = impls[0]
    out: list[Case] = []

    def add(rung: str, impl: str, mode: str, noise: str, run, weight_decay: float = 0.0) -> None:
        kinds = noise.split("+")
        if noise == "-" or any(kind in noises for kind in kinds):
            out.append(Case(rung=rung, backend=backend, impl=impl, mode=mode, noise=noise, run=run, device=device,
                            weight_decay=weight_decay, steps=steps, tuning=tuning))

    eager = "eager" in modes
    if eager:
        for impl in impls:
            add("layout", impl, "eager", "-", rungs.layout)
        add("set_params", fixed, "eager", "-", rungs.set_params)
        add("framework_init", fixed, "eager", "-", rungs.framework_init)
        for impl in impls:
            add("forward_eval", impl, "eager", "-", rungs.forward_eval)
    for mode in modes:
        for impl in impls:
            add("evaluate_exact", impl, mode, "-", rungs.evaluate_exact)
    if eager:
        for impl in impls:
            for noise in NOISE_KINDS:
                add("loss_grads", impl, "eager", noise, rungs.loss_grads)
    for mode in modes:
        for impl in impls:
            for noise in NOISE_KINDS:
                add("sgd_trajectory", impl, mode, noise, rungs.sgd_trajectory)
        add("sgd_trajectory", fixed, mode, "dropout", rungs.sgd_trajectory, WEIGHT_DECAY)
        for decay in (0.0, WEIGHT_DECAY):
            add("epoch_no_noise", fixed, mode, "-", rungs.epoch_no_noise, decay)
        add("epoch_noise_on", fixed, mode, "dropout", rungs.epoch_noise_on)
        add("epoch_new_noise", fixed, mode, "dropout", rungs.epoch_new_noise)
        add("evaluate_chunks", fixed, mode, "-", rungs.evaluate_chunks)
    if eager:
        for impl in impls:
            add("dropout_stats", impl, "eager", "dropout", noise_rungs.dropout_stats)
            add("p0_p1", impl, "eager", "dropout", noise_rungs.p0_p1)
            add("seeded_noise", impl, "eager", "dropout", noise_rungs.seeded_noise)
            add("gaussian_additive_stats", impl, "eager", "gaussian+additive", noise_rungs.gaussian_additive_stats)
            add("dropconnect_stats", impl, "eager", "dropconnect", noise_rungs.dropconnect_stats)
        if set(IMPLS) <= set(impls) and registry.capabilities(backend).distinct_impls:
            for noise in NOISE_KINDS:
                add("concise_scratch", "both", "eager", noise, noise_rungs.concise_scratch)
    return out

