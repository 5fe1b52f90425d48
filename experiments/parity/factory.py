"""Backends for the ladder, built in this process or behind their own venv's worker, and the float64 oracle."""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from backends import contract, registry
from backends.contract.spec import ModelSpec, TrainSpec
from backends.numpy.backend import Backend as Float32Reference, Oracle
from backends.remote.client import RemoteBackend


class BackendFactory:
    """Builds backends. Backends that live in another interpreter run behind one long-lived worker per backend name,
    re-initialised for every spec (starting MXNet costs seconds).

    ``classes`` replaces a backend's class (a test double, built in this process); ``allow_tf32`` (None: leave the
    framework's default) is handed to every backend before it is built (``Backend.set_matmul_precision``)."""

    def __init__(self, *, classes: Mapping[str, type] | None = None, allow_tf32: bool | None = None,
                 threads: int = 2) -> None:
        self.remotes: dict[str, RemoteBackend] = {}
        self.classes = dict(classes or {})
        self.allow_tf32 = allow_tf32
        self.threads = threads

    def __call__(self, name: str, *, model: ModelSpec | None = None, train: TrainSpec | None = None,
                 seed: int = 0, params=None, shared_init: bool = True, threads: int | None = None):
        model, train, threads = model or ModelSpec(), train or TrainSpec(), threads or self.threads
        if params is None and shared_init:
            params = contract.shared_init(model, seed)
        info = registry.resolve(name)
        if name in self.classes:
            backend = self.classes[name](model=model, train=train, threads=threads)
        elif info.in_process:
            backend = registry.load_class(name, train.tuning)(model=model, train=train, threads=threads)
        else:
            backend = self.remotes.get(name)
            if backend is None:
                backend = self.remotes[name] = RemoteBackend(name, model=model, train=train, threads=threads)
            else:
                backend.reconfigure(model=model, train=train, threads=threads)
        if self.allow_tf32 is not None:
            backend.set_matmul_precision(allow_tf32=self.allow_tf32)
        backend.build(seed=seed, params=params)
        return backend

    def close(self) -> None:
        for remote in self.remotes.values():
            remote.close()
        self.remotes.clear()

    def __enter__(self) -> "BackendFactory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def oracle_for(model: ModelSpec, train: TrainSpec, seed: int = 0) -> Oracle:
    """The float64 reference for the same spec, on the CPU; it has one mode, whatever mode the backend under test
    runs."""
    oracle = Oracle(model=model, train=dataclasses.replace(train, mode="eager", device="cpu"))
    oracle.build(seed=seed, params=contract.shared_init(model, seed))
    return oracle


class ReluKinks:
    """Which of the oracle's ReLUs a float32 computation puts on the other side of zero: the same forward as the
    oracle's (``pre_activations``), from its parameters rounded to float32, in float32 (the NumPy reference
    backend). Where one does, the float32 frameworks' trajectories may all leave the float64 oracle together at that
    step, which says nothing about any backend; ``sgd_trajectory`` names such steps beside a failure."""

    def __init__(self, model: ModelSpec, train: TrainSpec) -> None:
        self.twin = Float32Reference(model=model, train=dataclasses.replace(train, mode="eager", device="cpu"))
        self.twin.build(seed=0, params=contract.shared_init(model, 0))

    def count(self, oracle: Oracle, *, x, masks) -> tuple[int, float]:
        """(units whose ReLU differs, the smallest |pre-activation| of the oracle among them) before the oracle's
        next step on ``x``; (0, nan) where none does."""
        self.twin.set_params(params={k: v.astype(np.float32) for k, v in oracle.get_params().items()})
        exact = oracle.pre_activations(x=x, masks=masks)
        rounded = self.twin.pre_activations(x=x, masks=masks)
        flipped = [(z64 > 0) != (z32 > 0) for z64, z32 in zip(exact, rounded)]
        count = sum(int(f.sum()) for f in flipped)
        smallest = min((float(np.abs(z64[f]).min()) for z64, f in zip(exact, flipped) if f.any()), default=np.nan)
        return count, smallest


def eval_reference(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy computed in one piece from float64 logits."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -float(log_probs[np.arange(len(y)), y].mean()), float(np.mean(logits.argmax(axis=1) == y))
