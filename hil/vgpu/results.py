"""After a vGPU run: the bridge's statistics into metrics, the reference check, and
what a timeout or a bridge failure means for the verdict."""

from __future__ import annotations

import re
from pathlib import Path

from ..verdict import ERROR, FAIL, PASS, TIMEOUT, Verdict

_STATS = re.compile(r"^stats busy=[0-9a-f]+ halt=[0-9a-f]+ wakes=([0-9a-f]+) reqs=([0-9a-f]+)")
_DENY = re.compile(r"^!DENY ")


def gpu_metrics(stats: dict, lines) -> dict[str, float]:
    m: dict[str, float] = {
        "gpu.dispatches": stats["dispatches"],
        "gpu.instructions": stats["steps"],
        "gpu.requests": stats["requests"],
        "gpu.denied": stats["denied"],
        "gpu.events": stats["events"],
    }
    if stats["dispatch_total_s"]:
        m["gpu.instructions_per_s"] = round(stats["steps"] / stats["dispatch_total_s"], 1)
    for q in ("p50", "mean"):
        if q in stats["dispatch_ms"]:
            m[f"gpu.dispatch_ms.{q}"] = stats["dispatch_ms"][q]
    for q in ("p50", "p99"):
        if q in stats["roundtrip_us"]:
            m[f"gpu.roundtrip_us.{q}"] = stats["roundtrip_us"][q]
    last = None
    for ln in lines:
        if mt := _STATS.match(ln.text):
            last = mt
    if last and int(last[2], 16):
        m["gpu.wakeups_per_request"] = round(int(last[1], 16) / int(last[2], 16), 4)
    return m


def thread_summary(stats: dict, limit: int = 8) -> str:
    th = stats.get("threads") or []
    parts = [
        f"t{t['thread']} pc {t['pc']} ({t['x']},{t['y']}) {t['status']} after {t['steps']} steps"
        for t in th[:limit]
    ]
    more = f" (+{len(th) - limit} more in bridge.json)" if len(th) > limit else ""
    return "; ".join(parts) + more


def gpu_results(
    plan, run_dir: Path, stats: dict | None, console, verdict: Verdict, data: dict
) -> Verdict:
    lines = console.lines if console is not None else []
    if stats is None:
        data["gpu"] = {"error": "the bridge wrote no statistics (bridge.json missing)"}
        if verdict.outcome == PASS:
            return Verdict(ERROR, "the vGPU bridge left no statistics; see bridge.log", "infra")
        return verdict
    metrics = gpu_metrics(stats, lines)
    data["gpu"] = {
        **{
            k: stats.get(k)
            for k in (
                "backend",
                "adapter",
                "ended",
                "budget",
                "program",
                "threads",
                "roundtrip_us",
                "dispatch_ms",
                "problems",
            )
        },
        "metrics": metrics,
    }
    data["artifacts"].update(
        {n: n for n in ("trace.jsonl", "bridge.json", "bridge.log") if (run_dir / n).exists()}
    )
    if stats.get("ended") == "crashed":
        return Verdict(
            ERROR, "the vGPU bridge crashed; see bridge.log", "infra", evidence=verdict.evidence
        )
    if verdict.outcome == TIMEOUT and stats.get("threads"):
        verdict.reason += f"; GPU threads at the end: {thread_summary(stats)}"
    denials = [ln.text for ln in lines if _DENY.match(ln.text)]
    if denials:
        data["gpu"]["denials"] = denials[:20]
    o = plan.gpu.options
    if verdict.outcome == PASS and o.reference != "none":
        from .replay import compare

        results = compare(run_dir / "trace.jsonl")
        data["gpu"]["reference"] = [
            {
                "backend": r.backend,
                "runs": r.runs,
                "requests": r.requests,
                "steps": r.steps,
                "divergence": str(r.divergence) if r.divergence else None,
            }
            for r in results
        ]
        bad = next((r.divergence for r in results if r.divergence), None)
        if bad is not None:
            return Verdict(
                FAIL,
                f"GPU behaviour differs from the host-side reference: {bad}",
                "reference",
                step_label="reference check",
                evidence=verdict.evidence,
            )
    return verdict
