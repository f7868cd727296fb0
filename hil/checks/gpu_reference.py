"""gpu-reference (post-run): replay the vGPU's trace through host-side wgpu and NumPy
executors, without QEMU; the request stream, faults, step counts, final thread states
and memory must be identical (docs/vgpu.md, "Trace").  The vGPU device asks for it when
its scenario says ``gpu: {reference: wgpu}``."""

from __future__ import annotations

from ..devices.base import Finding
from .base import CHECKS, CheckKind


@CHECKS.register
class GpuReference(CheckKind):
    name = "gpu-reference"
    post = True

    def run_post(self, spec, ctx) -> Finding:
        from ..vgpu.replay import compare

        results = compare(ctx.run_dir / "trace.jsonl")
        rows = [
            {
                "backend": r.backend,
                "runs": r.runs,
                "requests": r.requests,
                "steps": r.steps,
                "divergence": str(r.divergence) if r.divergence else None,
            }
            for r in results
        ]
        ctx.sections.setdefault("gpu", {})["reference"] = rows
        bad = next((r.divergence for r in results if r.divergence), None)
        if bad is not None:
            return Finding(
                "reference check",
                "fail",
                f"GPU behaviour differs from the host-side reference: {bad}",
                "reference",
                data={"reference": rows},
            )
        names = " and ".join(r.backend for r in results)
        return Finding("reference check", "pass", f"identical on {names}", data={"reference": rows})
