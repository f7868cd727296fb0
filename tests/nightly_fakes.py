"""Synthetic run.json data for history and comparison tests (no QEMU involved)."""

from __future__ import annotations

import itertools
from pathlib import Path

_serial = itertools.count()


def run_data(
    scenario: str = "boot",
    profile: str = "q35-tcg-bios",
    outcome: str = "pass",
    metrics: dict | None = None,
    started_at: str = "2026-11-21T03:00:00+00:00",
    reason: str = "",
) -> dict:
    """The keys of run.json that the history reads (docs/results.md)."""
    return {
        "schema": 1,
        "scenario": scenario,
        "run_id": f"20261121T030000Z-{next(_serial):04x}",
        "started_at": started_at,
        "profile": {"name": profile},
        "accel": "tcg",
        "verdict": {
            "outcome": outcome,
            "reason": reason or f"{outcome} on purpose",
            "category": "" if outcome == "pass" else "expectation",
        },
        "exit_code": {"pass": 0, "fail": 1, "error": 3, "timeout": 4}.get(outcome, 130),
        "durations": {"build_s": 0.01, "machine_s": 1.5, "total_s": 1.6},
        "git": {"commit": "a" * 40, "dirty": False},
        "qemu": {"version": "QEMU emulator version 7.2.0"},
        "host": {"hostname": "testhost"},
        "image": {"key": "k" * 64},
        "metrics": dict(metrics or {}),
    }


class Nights:
    """Writes nightly batches into a History, one per call, a day apart."""

    def __init__(self, history, tmp: Path, kind: str = "nightly"):
        self.h, self.tmp, self.kind = history, tmp, kind
        self.day = 0

    def night(self, runs: dict[tuple[str, str], list[tuple[str, dict]]]) -> str:
        """runs: (scenario, profile) -> [(outcome, metrics) per repeat]; returns the batch id.
        An outcome 'error>pass' records an infrastructure error, then a passing retry."""
        self.day += 1
        stamp = f"2026-11-{self.day:02d}T03:00:00.000+00:00"
        batch = f"{self.kind}-{self.day:02d}"
        self.h.add_batch(batch, self.kind, stamp)
        for (sc, prof), reps in runs.items():
            for i, (outcome, metrics) in enumerate(reps):
                attempts = outcome.split(">")
                for a, out in enumerate(attempts, start=1):
                    d = self.tmp / f"{batch}-{sc}-{prof}-{i}-{a}"
                    d.mkdir()
                    self.h.record(
                        run_data(sc, prof, out, metrics if out == "pass" else {}, stamp),
                        d,
                        batch_id=batch,
                        repeat_index=i,
                        attempt=a,
                        flaky=out == "pass" and a > 1,
                    )
        self.h.finish_batch(batch, stamp)
        return batch
