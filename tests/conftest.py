"""Shared fixtures: which backends are under test, how to build one (the parity ladder's ``BackendFactory``: in this
process or in its own venv's worker), and real Fashion-MNIST.

``HARNESS_TEST_BACKENDS=torch,numpy`` narrows the backends; by default every registered backend is tested and a
missing framework is skipped with its install command, unless ``HARNESS_REQUIRE_BACKENDS=1`` (set by ``make test``
and CI) turns that skip into a failure, so that a broken install cannot pass as green.
"""
from __future__ import annotations

import importlib.util
import os

# ``make test`` runs the modules in several processes (pytest-xdist) on a machine of few cores. Each process's own
# BLAS and OpenMP pools (the float64 oracle's NumPy above all) would take every core, and threads that outnumber the
# cores spin against the other process's; so each test process's pools take its share of the cores, set here before
# NumPy is imported. A backend built with a thread count keeps it; the harness's workers get theirs from --threads.
TEST_THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1))
if TEST_THREADS < (os.cpu_count() or 1):
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, str(TEST_THREADS))

import numpy as np  # noqa: E402  (after the thread variables)
import pytest

import backends
from experiments import data
from experiments.parity.factory import BackendFactory


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


def require_module(name: str, install: str) -> None:
    """Skip when the module ``name`` (Ray: the optional extra of ``--executor ray``) cannot be imported, or fail
    under ``HARNESS_REQUIRE_BACKENDS=1``, which ``make test`` sets after installing it."""
    if importlib.util.find_spec(name) is not None:
        return
    reason = f"{name} is not installed; fix: {install}"
    if os.environ.get("HARNESS_REQUIRE_BACKENDS") == "1":
        pytest.fail(f"HARNESS_REQUIRE_BACKENDS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_ray() -> None:
    require_module("ray", "pip install -r requirements/main.txt  (or: make setup)")


class SkippingBackendFactory(BackendFactory):
    """The ladder's factory (``experiments.parity.factory``), but a missing framework skips the test (or fails it
    under ``HARNESS_REQUIRE_BACKENDS=1``). The frameworks' precision settings are left as they are."""

    def __call__(self, name: str, **kwargs):
        require_backend(name)
        return super().__call__(name, **kwargs)


# The longest test modules, longest first. ``make test`` runs the modules in two processes (pytest-xdist,
# ``--dist loadfile``: a module's tests stay in one process, so its module fixtures are made once), handing out
# whole modules in collection order; starting the long ones first keeps one from starting last and running alone.
LONGEST_FIRST = ("test_bench.py", "test_parity.py", "test_parity_tuned.py", "test_executors.py", "test_resume.py",
                 "test_faults.py", "test_end_to_end.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def make_backend():
    factory = SkippingBackendFactory()
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
