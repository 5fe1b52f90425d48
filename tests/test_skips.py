"""A missing framework or Ray skips a test only where a missing install is allowed: under
``HARNESS_REQUIRE_BACKENDS=1`` (``make test``, CI) it fails it, so that a broken install cannot pass as green. The
skips go through ``tests/conftest.py``'s helpers, never around them."""
from __future__ import annotations

import re

import pytest

import backends
from tests.conftest import require_backend, require_module

FRAMEWORKS = ("ray", "torch", "jax", "flax", "optax", "tensorflow", "keras", "mxnet")


def test_a_missing_module_skips_and_fails_under_harness_require_backends(monkeypatch):
    monkeypatch.delenv("HARNESS_REQUIRE_BACKENDS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_module_here is not installed; fix: pip install it"):
        require_module("no_such_module_here", "pip install it")
    monkeypatch.setenv("HARNESS_REQUIRE_BACKENDS", "1")
    with pytest.raises(pytest.fail.Exception, match="HARNESS_REQUIRE_BACKENDS=1 but no_such_module_here"):
        require_module("no_such_module_here", "pip install it")
    require_module("numpy", "pip install numpy")  # an installed one passes either way


def test_a_missing_backend_skips_and_fails_under_harness_require_backends(monkeypatch, tmp_path):
    monkeypatch.setenv("DROPBENCH_MXNET_PYTHON", str(tmp_path / "nowhere" / "python"))
    backends.framework_version.cache_clear()
    try:
        monkeypatch.delenv("HARNESS_REQUIRE_BACKENDS", raising=False)
        with pytest.raises(pytest.skip.Exception, match="make mxnet-venv"):
            require_backend("mxnet")
        monkeypatch.setenv("HARNESS_REQUIRE_BACKENDS", "1")
        with pytest.raises(pytest.fail.Exception, match="HARNESS_REQUIRE_BACKENDS=1 but backend mxnet"):
            require_backend("mxnet")
    finally:
        backends.framework_version.cache_clear()


def test_no_test_skips_a_framework_or_ray_around_the_helpers():
    """``pytest.importorskip`` of a framework or Ray, or a ``skipif`` on a backend's availability, would skip even
    under ``HARNESS_REQUIRE_BACKENDS=1``."""
    pattern = re.compile(r"importorskip\(\s*[\"'](%s)[\"'.]|skipif\(\s*not\s+(backends|registry)[\w.]*\.is_available"
                         % "|".join(FRAMEWORKS))
    offenders = []
    for path in sorted((backends.PROJECT_ROOT / "tests").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line) and path.name != "test_skips.py":
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "use tests.conftest.require_backend / require_ray instead:\n" + "\n".join(offenders)
