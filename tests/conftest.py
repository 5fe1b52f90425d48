"""Shared fixtures: which backends are under test, how to build one (in this process or in its own venv's worker),
and real Fashion-MNIST.

``HARNESS_TEST_BACKENDS=torch,numpy`` narrows the backends; by default every registered backend is tested and a
missing framework is skipped with its install command, unless ``HARNESS_REQUIRE_BACKENDS=1`` (set by ``make test``
and CI) turns that skip into a failure, so that a broken install cannot pass as green.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import backends
from backends.remote.client import RemoteBackend
from experiments import data
from backends.contract.spec import ModelSpec, TrainSpec


def backends_under_test() -> list[str]:
    requested = os.environ.get("HARNESS_TEST_BACKENDS", "")
    names = [n.strip() for n in requested.split(",") if n.strip()] or list(backends.REGISTRY)
    return [backends.resolve(n).name for n in names]


def require_backend(name: str, *, module_level: bool = False) -> None:
    """Skip when the backend's framework is missing, or fail under ``HARNESS_REQUIRE_BACKENDS=1``.

    ``module_level``: called at a test module's top, before it imports the framework (a failure there is a
    collection error, which fails the run)."""
    if backends.is_available(name):
        return
    reason = backends.unavailable_reason(name)
    if os.environ.get("HARNESS_REQUIRE_BACKENDS") == "1":
        pytest.fail(f"HARNESS_REQUIRE_BACKENDS=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


class BackendFactory:
    """Builds backends for tests. Backends that live in another interpreter run behind one long-lived worker per
    backend name, re-initialised for every spec (starting MXNet costs seconds)."""

    def __init__(self) -> None:
        self.remotes: dict[str, RemoteBackend] = {}

    def __call__(self, name: str, *, model: ModelSpec | None = None, train: TrainSpec | None = None,
                 seed: int = 0, params=None, shared_init: bool = True, threads: int = 2):
        require_backend(name)
        model, train = model or ModelSpec(), train or TrainSpec()
        if params is None and shared_init:
            from backends.contract import shared_init as draw

            params = draw(model, seed)
        info = backends.resolve(name)
        if info.in_process:
            backend = backends.load_class(name)(model=model, train=train, threads=threads)
        else:
            backend = self.remotes.get(name)
            if backend is None:
                backend = self.remotes[name] = RemoteBackend(name, model=model, train=train, threads=threads)
            else:
                backend.reconfigure(model=model, train=train, threads=threads)
        backend.build(seed=seed, params=params)
        return backend

    def close(self) -> None:
        for remote in self.remotes.values():
            remote.close()


@pytest.fixture(scope="session")
def make_backend():
    factory = BackendFactory()
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def fashion() -> data.FashionMNIST:
    """Real Fashion-MNIST (located as the harness does, never downloaded by the tests)."""
    try:
        folder = data.locate(download=False, progress=False)
    except data.DataError as exc:
        pytest.fail(f"real Fashion-MNIST is required by the tests: {exc}")
    return data.load(folder)


@pytest.fixture(scope="session")
def rng_factory():
    return lambda seed: np.random.default_rng(seed)
