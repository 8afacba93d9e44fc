"""Small, pure statistics for repeated measurements: median and spread, percentiles."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Summary:
    """The median of repeated measurements and their range."""

    median: float
    low: float
    high: float
    n: int

    @property
    def spread(self) -> float:
        """(high - low) / median: how far apart the repetitions were, as a fraction."""
        return (self.high - self.low) / self.median if self.median else 0.0


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        return Summary(math.nan, math.nan, math.nan, 0)
    return Summary(statistics.median(samples), min(samples), max(samples), len(samples))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of already sorted values; NaN if empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def max_in_window(times: Sequence[float], width: float) -> int:
    """The most events in any closed window ``[t, t + width]`` (times need not be sorted)."""
    ordered = sorted(times)
    best = lo = 0
    for hi, t in enumerate(ordered):
        while ordered[lo] < t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
