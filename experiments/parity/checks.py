"""One measured comparison of the ladder, and the tolerance it is held to.

Tolerance: float32 frameworks against the float64 oracle, measured as max |actual - expected| <= RTOL * max |expected|
(scale-relative, so that small entries of a large tensor do not need an absolute fudge). The NumPy float32 backend
reaches about 1e-7 on every rung (20 steps included); RTOL = 1e-5 leaves room for other summation orders (oneDNN,
XLA, Eigen) while a transposed kernel, a mask scaled by p instead of 1/(1-p), or noise left on in evaluation miss by
orders of magnitude.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RTOL = 1e-5


@dataclass(frozen=True)
class Check:
    """``criterion`` says how ``passed`` follows from the numbers: ``rel <= tol`` (scale-relative error),
    ``abs <= tol`` / ``abs < tol`` (a statistic's distance from its expectation), ``rel > tol`` (two results that must
    differ), ``holds`` (a property; the errors are 0 or 1)."""

    what: str
    max_abs_err: float
    max_rel_err: float
    tolerance: float
    passed: bool
    criterion: str = "rel <= tol"
    step: int | None = None

    @property
    def margin(self) -> float:
        """The error over what the criterion allows: at most 1 when passed (0 for a property that holds)."""
        if self.criterion == "holds":
            return 0.0 if self.passed else math.inf
        measured = self.max_rel_err if self.criterion.startswith("rel") else self.max_abs_err
        if self.criterion == "rel > tol":
            return self.tolerance / measured if measured else math.inf
        if not self.tolerance:
            return 0.0 if measured == 0 else math.inf
        return measured / self.tolerance if math.isfinite(measured) else math.inf

    def message(self) -> str:
        return (f"{self.what}{'' if self.step is None else f' (step {self.step})'}: max abs err "
                f"{self.max_abs_err:.3g}, max rel err {self.max_rel_err:.3g}, needs {self.criterion} "
                f"(tol {self.tolerance:g})")


def _arrays(actual, expected) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)


def close(what: str, actual, expected, rtol: float = RTOL, step: int | None = None) -> Check:
    """Max absolute error within ``rtol`` times the scale of ``expected`` (its largest magnitude), and finite;
    ``rtol=0`` asks for exact equality."""
    actual, expected = _arrays(actual, expected)
    if actual.shape != expected.shape:
        return Check(f"{what}: shape {actual.shape} != {expected.shape}", math.inf, math.inf, rtol, False, step=step)
    scale = max(float(np.abs(expected).max()), 1e-12) if expected.size else 1e-12
    error = float(np.abs(actual - expected).max()) if actual.size else 0.0
    if not np.all(np.isfinite(actual)):
        error = math.inf
    return Check(what, error, error / scale, rtol, error <= rtol * scale, step=step)


def elementwise(what: str, actual, expected, rtol: float) -> Check:
    """|actual - expected| <= rtol * |expected| element by element (NumPy's ``assert_allclose`` with atol 0)."""
    actual, expected = _arrays(actual, expected)
    error = np.abs(actual - expected)
    relative = error / np.maximum(np.abs(expected), 1e-300)
    worst_abs = float(error.max()) if error.size else 0.0
    worst_rel = float(relative.max()) if relative.size else 0.0
    return Check(what, worst_abs, worst_rel, rtol, bool(np.all(error <= rtol * np.abs(expected))), "rel <= tol")


def within(what: str, measured: float, expected: float, bound: float, *, strict: bool = True) -> Check:
    """A statistic within ``bound`` of its expectation (``strict``: ``<``, else ``<=``)."""
    error = abs(float(measured) - float(expected))
    relative = error / abs(expected) if expected else error
    passed = error < bound if strict else error <= bound
    return Check(what, error, relative, float(bound), bool(passed), "abs < tol" if strict else "abs <= tol")


def differs(what: str, change: float, scale: float, threshold: float) -> Check:
    """Two results that must differ: the change relative to ``scale`` above ``threshold``."""
    relative = float(change) / max(float(scale), 1e-12)
    return Check(what, float(change), relative, threshold, relative > threshold, "rel > tol")


def holds(what: str, ok: bool) -> Check:
    return Check(what, 0.0 if ok else 1.0, 0.0 if ok else 1.0, 0.0, bool(ok), "holds")


def worst(checks: list[Check]) -> Check:
    """The failing check that missed by most, else the one closest to failing."""
    return max(checks, key=lambda c: (not c.passed, c.margin))
