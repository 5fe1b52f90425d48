"""Numbers over seeds and over epochs: the one place each statistic of the reports and the bench is defined.

- ``Stat`` / ``stat`` / ``paired``: a value over seeds (mean, sd, n, 95 % t-interval), and B minus A paired by seed;
- ``fmt_stat`` / ``describe``: the number and the sentence for a difference, beyond the seed noise or within it;
- ``steady_epochs``: the steady epoch time of a job (median and quartiles of epochs 2..E; epoch 1 carries
  compilation and warm-up);
- ``log_ratio_test`` / ``holm``: B / A of two jobs' steady epoch times with Student's t on their logs, and Holm's
  adjustment over the jobs of one comparison (``experiments.compare``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Stat:
    """A quantity over seeds: mean, sample sd and count."""

    mean: float
    sd: float
    n: int
    above: int = 0  # seeds with a value above 0
    below: int = 0  # seeds with a value below 0

    @property
    def half_width(self) -> float:
        """Half-width of the 95 % t-interval of the mean (NaN for fewer than two seeds)."""
        if self.n < 2 or not math.isfinite(self.sd):
            return math.nan
        from scipy import stats as scipy_stats  # on first use: every command imports this module

        return float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, self.n - 1)) * self.sd / math.sqrt(self.n)

    @property
    def clear(self) -> bool:
        """True when the 95 % interval excludes 0: the difference is beyond the seed noise."""
        return self.n >= 2 and math.isfinite(self.half_width) and abs(self.mean) > self.half_width

    @property
    def interval(self) -> tuple[float, float]:
        """The 95 % t-interval of the mean (NaN ends for fewer than two seeds)."""
        return self.mean - self.half_width, self.mean + self.half_width

    def scaled(self, factor: float) -> "Stat":
        above, below = (self.above, self.below) if factor >= 0 else (self.below, self.above)
        return Stat(self.mean * factor, self.sd * abs(factor), self.n, above, below)


def stat(values: Iterable[float]) -> Stat:
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return Stat(math.nan, math.nan, 0)
    return Stat(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v), int((v > 0).sum()),
                int((v < 0).sum()))


def paired(frame, value: str, a: str, b: str, key: str = "variant") -> Stat:
    """``value`` of ``b`` minus that of ``a``, seed by seed, over the seeds both have (one setup's rows)."""
    left = frame[frame[key] == a].groupby("seed")[value].mean()
    right = frame[frame[key] == b].groupby("seed")[value].mean()
    common = left.index.intersection(right.index)
    return stat((right[common] - left[common]).to_numpy())


def fmt_stat(s: Stat, digits: int = 2, signed: bool = False) -> str:
    """``85.29 ± 0.25`` (mean ± sd over seeds), or the bare mean for one seed, or ``-``."""
    if s.n == 0:
        return "-"
    mean = f"{s.mean:+.{digits}f}" if signed else f"{s.mean:.{digits}f}"
    return mean if s.n < 2 else f"{mean} ± {s.sd:.{digits}f}"


def verdict(s: Stat) -> str:
    """Whether a difference over seeds is beyond the seed noise (its 95 % interval excludes 0) or within it."""
    if s.n == 0:
        return "not measured"
    if s.n < 2:
        return "one seed: no spread to judge"
    return "beyond the seed noise" if s.clear else "within the seed noise"


def describe(s: Stat, unit: str = "points", digits: int = 2) -> str:
    """A difference in words: its size and sign, its spread over seeds, and whether it is beyond the seed noise."""
    if s.n == 0:
        return "not measured (no finished runs to compare)"
    head = f"{s.mean:+.{digits}f} {unit}"
    if s.n < 2:
        return f"{head} (one seed: no spread to judge)"
    lo, hi = s.interval
    signs = f"negative in {s.below}" if s.mean < 0 else f"positive in {s.above}"
    return (f"{head} (sd {s.sd:.{digits}f} over {s.n} seeds, {signs} of them; 95 % CI {lo:+.{digits}f} to "
            f"{hi:+.{digits}f}: {verdict(s)})")


@dataclass(frozen=True)
class Steady:
    """The steady epoch time of one job: median and quartiles (linear interpolation, NumPy's default)."""

    median: float
    q1: float
    q3: float
    epochs: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Median and the 25th/75th percentiles with linear interpolation (NumPy's default)."""
    median, q1, q3 = np.percentile(np.asarray(values, dtype=float), [50, 25, 75])
    return float(median), float(q1), float(q3)


def steady_epochs(epoch_seconds: Sequence[float]) -> Steady | None:
    """Epochs 2..E of a job's epoch times (epoch 1 carries compilation and warm-up); None with fewer than two."""
    steady = list(epoch_seconds[1:])
    if not steady:
        return None
    median, q1, q3 = quartiles(steady)
    return Steady(median, q1, q3, len(steady))


@dataclass(frozen=True)
class TimeTest:
    """B against A on the logs of their steady epoch times (Student's t with the pooled spread): the ratio of the
    geometric means B / A, its 95 % interval and the two-sided p. ``p`` is None where the samples cannot be tested:
    fewer than two epochs a side, or no spread at all while the times differ (no noise to weigh the difference
    against)."""

    ratio: float
    low: float
    high: float
    p: float | None
    df: float


def log_ratio_test(a: Sequence[float], b: Sequence[float]) -> TimeTest | None:
    """Student's two-sample t-test on ``log(b)`` against ``log(a)``, the spread pooled over both runs: under the
    question asked (are the two runs draws of one configuration?) both have one spread, and the pooled estimate with
    ``len(a) + len(b) - 2`` degrees of freedom makes the test exact for log-normal times, where Welch's would only
    approximate it. None where a side has a time that is not positive."""
    if not (len(a) and len(b)) or min(a) <= 0 or min(b) <= 0:
        return None
    la, lb = np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float))
    diff = float(lb.mean() - la.mean())
    df = len(la) + len(lb) - 2
    if len(la) < 2 or len(lb) < 2:
        return TimeTest(math.exp(diff), math.nan, math.nan, None, math.nan)
    pooled = (float(((la - la.mean()) ** 2).sum()) + float(((lb - lb.mean()) ** 2).sum())) / df
    se = math.sqrt(pooled * (1 / len(la) + 1 / len(lb)))
    if se == 0:
        return TimeTest(math.exp(diff), math.exp(diff), math.exp(diff), 1.0 if diff == 0 else None, df)
    from scipy import stats as scipy_stats

    p = float(2 * scipy_stats.t.sf(abs(diff) / se, df))
    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
    return TimeTest(math.exp(diff), math.exp(diff - half), math.exp(diff + half), p, df)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (one family): an adjusted p below alpha keeps the chance of any
    false call among them below alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
