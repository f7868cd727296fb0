"""One judge: the steps' outcome, the post-run findings and the metric limits -> the verdict.

The order, which docs/results.md repeats:

1. An interrupted run is interrupted, whatever else happened.
2. A finding of an infrastructure error (the vGPU bridge crashed, left no statistics)
   makes the run an error: its results cannot be trusted.
3. Steps that did not pass decide the verdict (their failure, timeout or error);
   ``info`` findings are added to its reason (where the GPU threads were at a timeout).
4. Steps that passed: the first post-run check that failed (in plan order: the
   devices' checks, then the scenario's ``checks:``) fails the run;
5. then the first metric limit not met fails it;
6. else the run passes; ``info`` findings are added to its reason too (a device DMA the
   IOMMU blocked: the run passed, and says what was stopped).
"""

from __future__ import annotations

from .devices.base import Finding
from .record import LimitResult
from .verdict import ERROR, FAIL, INTERRUPTED, PASS, Verdict


def judge(steps: Verdict, findings: list[Finding], limits: list[LimitResult]) -> Verdict:
    if steps.outcome == INTERRUPTED:
        return steps
    error = next((f for f in findings if f.outcome == ERROR), None)
    if error is not None:
        return Verdict(ERROR, error.reason, error.category or "infra", evidence=steps.evidence)
    if steps.outcome != PASS:
        notes = [f.reason for f in findings if f.outcome == "info"]
        if notes:
            return _with(steps, reason=steps.reason + "; " + "; ".join(notes))
        return steps
    failed = next((f for f in findings if f.outcome == FAIL), None)
    if failed is not None:
        return Verdict(
            FAIL,
            failed.reason,
            failed.category or "check",
            step_label=failed.source,
            step_line=failed.line,
            evidence=failed.evidence or steps.evidence,
        )
    bad = [x for x in limits if not x.ok]
    if bad:
        return Verdict(
            FAIL,
            "metric limit not met: " + "; ".join(x.detail for x in bad),
            "metric",
            step_label="metrics",
            step_line=bad[0].line,
            evidence=steps.evidence,
        )
    notes = [f.reason for f in findings if f.outcome == "info"]
    return _with(steps, reason=steps.reason + "; " + "; ".join(notes)) if notes else steps


def check_limit(lim, value) -> LimitResult:
    """One metric limit against the measured value."""

    def result(ok: bool, detail: str) -> LimitResult:
        return LimitResult(lim.metric, lim.min, lim.max, value, ok, detail, lim.line)

    if value is None:
        return result(False, f"{lim.metric} was not measured (no data for it in this run)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return result(False, f"{lim.metric} = {value!r} is not a number")
    if value != value:  # NaN passes no limit
        return result(False, f"{lim.metric} = nan is not a number")
    if lim.min is not None and value < lim.min:
        return result(False, f"{lim.metric} = {value:g} is below min {lim.min:g}")
    if lim.max is not None and value > lim.max:
        return result(False, f"{lim.metric} = {value:g} is above max {lim.max:g}")
    return result(True, f"{lim.metric} = {value:g} within limits")


def _with(v: Verdict, **changes) -> Verdict:
    from dataclasses import replace

    return replace(v, **changes)
