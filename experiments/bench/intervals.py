"""The bench's statistic over rounds: the median, with a bootstrap interval of the median, and the rank it allows.

Each round gives one sample of a quantity (a job's ratio to the floor measured beside it, a tier's gain in that
round, a part of the breakdown). The figure reported is the median over the rounds; its interval is the 95 %
percentile bootstrap interval of that median: the rounds are resampled with replacement (``RESAMPLES`` times, from a
fixed seed, so a bench's tables are reproducible from its rounds), the median of each resample taken, and the 2.5th
and 97.5th percentiles of those medians kept. It says where the median of rounds like these would fall, so it narrows
as rounds are added (an interquartile range would not: it describes the rounds' spread, not the median's
uncertainty). With few rounds it is wide on purpose: with two to five rounds it is the range of the rounds (the
smallest and the largest round are each the median of more than 2.5 % of the resamples); from six rounds on it
leaves the extreme rounds out. One round gives no interval.

``tie_groups`` orders items by their intervals only where the intervals do not overlap: items whose intervals
overlap, directly or through a chain of others, are one group, "tied on this machine".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0  # the bootstrap's own seed: the same rounds give the same interval


@dataclass(frozen=True)
class Spread:
    """The median of a quantity over rounds, and the bootstrap interval of that median (None with one round)."""

    median: float
    low: float | None
    high: float | None
    n: int

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def holds(self, value: float) -> bool:
        """Whether the interval holds ``value`` (a part's zero, a gain's one). False without an interval."""
        return self.has_interval and self.low <= value <= self.high

    def overlaps(self, other: "Spread") -> bool:
        return self.has_interval and other.has_interval and self.low <= other.high and other.low <= self.high


def median_interval(values: Iterable[Any], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                    seed: int = SEED) -> Spread | None:
    """The median of the finite ``values`` and the percentile bootstrap interval of the median; None when no value
    is finite."""
    samples = np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=float)
    if len(samples) == 0:
        return None
    median = float(np.median(samples))
    if len(samples) < 2:
        return Spread(median, None, None, 1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(samples), size=(resamples, len(samples)))
    medians = np.median(samples[picks], axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return Spread(median, float(low), float(high), len(samples))


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
