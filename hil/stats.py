"""Summary statistics of repeated measurements (medians and spread; docs/nightly.md)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    n: int
    median: float
    min: float
    max: float
    mad: float  # median absolute deviation from the median (0 for a single value)

    @classmethod
    def of(cls, values: list[float]) -> Stats | None:
        vals = [float(v) for v in values]
        if not vals:
            return None
        med = statistics.median(vals)
        mad = statistics.median(abs(v - med) for v in vals)
        return cls(len(vals), med, min(vals), max(vals), mad)

    @property
    def sigma(self) -> float:
        """The spread as a standard deviation: 1.4826 x MAD (exact for normal noise,
        robust against a single outlier among the repeats)."""
        return 1.4826 * self.mad

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "mad": self.mad,
        }

    def format(self, unit: str = "") -> str:
        if self.n == 1:
            return f"{self.median:g}{unit}"
        if self.min == self.max:
            return f"{self.median:g}{unit} (n={self.n}, all equal)"
        return f"{self.median:g}{unit} [{self.min:g}..{self.max:g}, n={self.n}]"


def rank_p(baseline: list[float], current: list[float], better: str) -> float:
    """One-sided exact Mann-Whitney p-value that ``current`` is worse than ``baseline``
    (``better``: "lower" or "higher" is better).  U counts the (baseline, current) pairs
    in which current is worse (a tie counts a half); p = P(U >= observed) when both
    samples come from one distribution, from the exact null distribution (every split of
    the pooled ranks equally likely; ties are broken evenly, which is conservative enough
    for timing data, where they are rare).  With 3 against 3 the smallest possible p is
    1/20 = 0.05: the test states how sure so few repeats can make anyone."""
    m, n = len(baseline), len(current)
    if not m or not n:
        return 1.0
    sign = 1 if better == "lower" else -1
    u = sum(
        1.0 if sign * (c - b) > 0 else 0.5 if c == b else 0.0 for b in baseline for c in current
    )
    # counts[k] = number of rank arrangements with U = k (U over 0..m*n), by recurrence
    # over the largest element: it is either a current value (adds the m baseline
    # values below it) or a baseline value (adds nothing).
    table = {(0, j): [1] for j in range(n + 1)} | {(i, 0): [1] for i in range(m + 1)}
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            a, b = table[(i - 1, j)], table[(i, j - 1)]  # largest is baseline / current
            out = [0] * (i * j + 1)
            for k, v in enumerate(a):
                out[k] += v
            for k, v in enumerate(b):
                out[k + i] += v
            table[(i, j)] = out
    counts = table[(m, n)]
    total = sum(counts)
    need = int(-(-u // 1))  # ceil: a half-tie counts toward the observed side
    return sum(counts[need:]) / total
