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
