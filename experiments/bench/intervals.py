"""The bench's statistic over rounds: the median, with a distribution-free interval of the median, and the rank it
allows.

Each round gives one sample of a quantity (a job's ratio to the floor measured beside it, a tier's gain in that
round, a part of the breakdown). The figure reported is the median over the rounds. Its interval is made of two of
the rounds themselves, the j-th lowest and the j-th highest: whatever the rounds' distribution (continuous, the
rounds independent), the number of rounds below that distribution's median is binomial (n, 1/2), so the interval
holds the median with probability exactly 1 - 2 P(Binomial(n, 1/2) <= j - 1), its ``coverage``. j is the largest
that keeps the coverage at ``CONFIDENCE`` (95 %) or more, as ``scipy.stats.quantile_test`` chooses it; that needs six
rounds. With two to five rounds no pair of rounds reaches 95 %: the interval is then the range of the rounds, and
its coverage, 1 - 2^(1-n) (75 % at three rounds), is what the tables say beside it. One round gives no interval.

``tie_groups`` orders items by their intervals only where the intervals do not overlap: items whose intervals
overlap, directly or through a chain of others, are one group, "tied on this machine".
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

CONFIDENCE = 0.95


@functools.lru_cache(maxsize=None)
def interval_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, float] | None:
    """(j, coverage) for ``n`` rounds: the interval from the j-th lowest to the j-th highest round, and the
    probability that it holds the median of the rounds' distribution; j = 1 (the range) when no j reaches
    ``confidence``; None for fewer than two rounds."""
    if n < 2:
        return None
    from scipy import stats  # on first use, as report/stats.py does: scipy.stats is slow to import

    def coverage(j: int) -> float:
        return float(1.0 - 2.0 * stats.binom.cdf(j - 1, n, 0.5))

    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= confidence:
        j += 1
    return j, coverage(j)


def percent(probability: float) -> str:
    """``75 %``, ``93.8 %``: a probability as the tables print it."""
    return f"{probability * 100:.1f}".rstrip("0").rstrip(".") + " %"


def coverage_words(n: int) -> str:
    """What [low, high] is with ``n`` rounds, for the tables' captions."""
    ranks = interval_ranks(n)
    if ranks is None:
        return "no interval (fewer than two rounds)"
    j, covered = ranks
    which = f"the range of the {n} rounds" + (f" without the {j - 1} lowest and the {j - 1} highest" if j > 1 else "")
    short = " (95 % needs six rounds)" if covered < CONFIDENCE else ""
    return f"{which}, which holds the median of rounds like these with probability {percent(covered)}{short}"


@dataclass(frozen=True)
class Spread:
    """The median of a quantity over rounds, and the interval of that median (None with one round)."""

    median: float
    low: float | None
    high: float | None
    n: int

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def coverage(self) -> float | None:
        """The probability that the interval holds the median of the rounds' distribution."""
        ranks = interval_ranks(self.n) if self.has_interval else None
        return ranks[1] if ranks else None

    def holds(self, value: float) -> bool:
        """Whether the interval holds ``value`` (a part's zero, a gain's one). False without an interval."""
        return self.has_interval and self.low <= value <= self.high

    def overlaps(self, other: "Spread") -> bool:
        return self.has_interval and other.has_interval and self.low <= other.high and other.low <= self.high


def median_interval(values: Iterable[Any], *, confidence: float = CONFIDENCE) -> Spread | None:
    """The median of the finite ``values`` and the distribution-free interval of the median (``interval_ranks``);
    None when no value is finite."""
    samples = np.sort(np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))],
                                 dtype=float))
    if len(samples) == 0:
        return None
    median = float(np.median(samples))
    ranks = interval_ranks(len(samples), confidence)
    if ranks is None:
        return Spread(median, None, None, 1)
    j = ranks[0]
    return Spread(median, float(samples[j - 1]), float(samples[len(samples) - j]), len(samples))


def spread_columns(prefix: str, spread: Spread | None) -> dict[str, Any]:
    """``{prefix}``, ``{prefix}_low``, ``{prefix}_high`` for a table row (None where not measured)."""
    if spread is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    return {prefix: spread.median, f"{prefix}_low": spread.low, f"{prefix}_high": spread.high}


def spread_of(row: dict[str, Any], prefix: str) -> Spread | None:
    """The spread a row holds in its ``spread_columns`` (read back from a table: strings or numbers)."""
    def number(value) -> float | None:
        if value is None or value == "":
            return None
        value = float(value)
        return value if math.isfinite(value) else None

    median = number(row.get(prefix))
    if median is None:
        return None
    low, high = number(row.get(f"{prefix}_low")), number(row.get(f"{prefix}_high"))
    n = int(float(row.get("rounds_ok") or 0)) if row.get("rounds_ok") not in (None, "") else 0
    if low is None or high is None:
        return Spread(median, None, None, min(n, 1) or 1)
    return Spread(median, low, high, max(n, 2))


def fmt_spread(spread: Spread | None, spec: str = ".2f") -> str:
    """``1.21 [1.18, 1.25]``; the bare median with one round; ``-`` when not measured."""
    if spread is None:
        return "-"
    if not spread.has_interval:
        return format(spread.median, spec)
    return f"{spread.median:{spec}} [{spread.low:{spec}}, {spread.high:{spec}}]"


def tie_groups(items: Sequence[tuple[Any, Spread]]) -> tuple[list[list[Any]], list[Any]]:
    """Items (key, spread) in groups, lowest first: a group holds the items whose intervals overlap, directly or
    through a chain of others; every item of a group lies wholly below every item of the next. Items without an
    interval (one round) cannot be ranked and come back apart, second."""
    ranked = sorted(((key, s) for key, s in items if s is not None and s.has_interval),
                    key=lambda item: (item[1].low, item[1].median))
    unranked = [key for key, s in items if s is None or not s.has_interval]
    groups: list[list[Any]] = []
    reach = -math.inf
    members: list[tuple[Any, Spread]] = []
    for key, s in ranked:
        if members and s.low > reach:
            groups.append([k for k, _ in sorted(members, key=lambda m: m[1].median)])
            members = []
        members.append((key, s))
        reach = max(reach, s.high) if len(members) > 1 else s.high
    if members:
        groups.append([k for k, _ in sorted(members, key=lambda m: m[1].median)])
    return groups, unranked
