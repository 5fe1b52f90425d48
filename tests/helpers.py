"""Helpers that several test files use."""
from __future__ import annotations

import csv

import numpy as np


def assert_close(actual, expected, what: str, rtol: float = 1e-5) -> None:
    """Max absolute error within ``rtol`` times the scale of ``expected`` (its largest magnitude), and finite."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: not finite"
    scale = max(float(np.abs(expected).max()), 1e-12)
    error = float(np.abs(actual - expected).max())
    assert error <= rtol * scale, f"{what}: max abs error {error:.3g} > {rtol:g} x scale {scale:.3g}"


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
