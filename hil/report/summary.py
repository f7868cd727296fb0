"""The nightly report's data: ``build_summary`` turns the comparisons into one plain dict
(what summary.json holds); every file is rendered from it (hil/report/writers.py), so the
files cannot disagree.  Layout and keys: docs/nightly.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import results
from ..baseline import (
    FIXED,
    INFRA,
    INTERRUPTED_,
    NEW_FAILURE,
    PASSING,
    STILL_FAILING,
    KeyComparison,
)

SCHEMA = 1
TREND_METRICS = ("boot_ms", "cpu_idle")
STATUS_ORDER = [NEW_FAILURE, INFRA, INTERRUPTED_, STILL_FAILING, FIXED, PASSING]


def build_summary(
    comparisons: list[KeyComparison],
    *,
    batch_id: str,
    date: str,
    started_at: str,
    finished_at: str,
    exit_code: int,
    interrupted: bool,
    out_dir: Path,
    argv: list[str],
) -> dict:
    keys = [_key_json(c, out_dir) for c in sorted(comparisons, key=_order)]
    counts: dict[str, int] = {s: 0 for s in STATUS_ORDER}
    for c in comparisons:
        counts[c.status] = counts.get(c.status, 0) + 1
    counts.update(
        keys=len(comparisons),
        regressions=sum(c.regression for c in comparisons),
        metric_regressions=sum(bool(c.metric_regressions) for c in comparisons),
        flaky=sum(c.flaky for c in comparisons),
        runs=sum(len(c.attempts) for c in comparisons),
        retries=sum(1 for c in comparisons for r in c.attempts if r.attempt > 1),
    )
    first = next((r for c in comparisons for r in c.runs), None)
    return {
        "schema": SCHEMA,
        "batch_id": batch_id,
        "date": date,
        "started_at": started_at,
        "finished_at": finished_at,
        "exit_code": exit_code,
        "interrupted": interrupted,
        "command": argv,
        "git": {"commit": first.git_commit, "dirty": bool(first.git_dirty)} if first else {},
        "host": first.host if first else None,
        "qemu_version": first.qemu_version if first else None,
        "counts": counts,
        "changed": changed_lines(comparisons),
        "keys": keys,
    }


def _order(c: KeyComparison):
    reg = 0 if c.regression else 1
    return (reg, STATUS_ORDER.index(c.status), c.scenario, c.profile)


def changed_lines(comparisons: list[KeyComparison]) -> list[str]:
    """What changed since the baseline, most important first (one line each)."""
    out = []
    for c in sorted(comparisons, key=_order):
        k = f"{c.scenario} [{c.profile}]"
        if c.status == NEW_FAILURE:
            was = f"was {c.previous_outcome}" if c.previous_outcome else "never ran before"
            out.append(f"NEW FAILURE  {k}: {c.outcome} ({was}): {c.reason}")
        for m in c.metric_regressions:
            out.append(f"REGRESSION   {k}: {m.sentence()}")
    for c in sorted(comparisons, key=_order):
        k = f"{c.scenario} [{c.profile}]"
        if c.status == INFRA:
            out.append(f"INFRA ERROR  {k}: {c.reason}")
        if c.status == FIXED:
            out.append(f"FIXED        {k}: passes again (was {c.previous_outcome})")
        if c.flaky:
            out.append(f"FLAKY        {k}: {_flaky_why(c)}")
        for m in c.changes:
            if m.verdict == "improvement":
                out.append(f"IMPROVED     {k}: {m.sentence()}")
    return out


def _flaky_why(c: KeyComparison) -> str:
    retried = [r for r in c.runs if r.flaky]
    if retried:
        return f"passed only on retry ({len(retried)} of {len(c.runs)} runs)"
    outs = [r.outcome for r in c.runs]
    return f"repeats disagree: {', '.join(outs)}"


def _key_json(c: KeyComparison, out_dir: Path) -> dict:
    runs = []
    for r in c.attempts:
        rd = Path(r.run_dir)
        try:
            arts = results.read_run(rd).get("artifacts", {})
        except (OSError, ValueError):
            arts = {}
        runs.append(
            {
                "run_id": rd.name,
                "run_dir": _rel(rd, out_dir),
                "outcome": r.outcome,
                "reason": r.reason,
                "repeat_index": r.repeat_index,
                "attempt": r.attempt,
                "flaky": bool(r.flaky),
                "counted": any(x.id == r.id for x in c.runs),
                "accel": r.accel,
                "total_s": r.total_s,
                "metrics": {k: r.metrics[k] for k in TREND_METRICS if k in r.metrics},
                "artifacts": {name: _rel(rd / f, out_dir) for name, f in sorted(arts.items())},
            }
        )
    return {
        "scenario": c.scenario,
        "profile": c.profile,
        "status": c.status,
        "outcome": c.outcome,
        "regression": c.regression,
        "flaky": c.flaky,
        "reason": c.reason,
        "previous_outcome": c.previous_outcome,
        "previous_batch": c.previous_batch,
        "baseline_batch": c.baseline_batch,
        "baseline_pinned": c.baseline_pinned,
        "note": c.note,
        "metrics": {k: s.to_json() for k, s in c.stats.items()},
        "changes": [m.to_json() for m in c.changes],
        "runs": runs,
    }


def _rel(p: Path, start: Path) -> str:
    return os.path.relpath(Path(p).resolve(), Path(start).resolve())


def headline(s: dict) -> str:
    c = s["counts"]
    if s["interrupted"]:
        return "INTERRUPTED (partial results)"
    parts = []
    if c["regressions"]:
        parts.append(f"{c['regressions']} REGRESSED")
    if c[INFRA]:
        parts.append(f"{c[INFRA]} infrastructure error{'s' * (c[INFRA] != 1)}")
    if c[STILL_FAILING]:
        parts.append(f"{c[STILL_FAILING]} still failing")
    if c[FIXED]:
        parts.append(f"{c[FIXED]} fixed")
    if c["flaky"]:
        parts.append(f"{c['flaky']} flaky")
    return ", ".join(parts) if parts else f"all {c['keys']} passing, no regressions"


def load_summary(path: Path) -> dict:
    return json.loads(Path(path).read_text())
