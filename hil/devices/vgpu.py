"""vgpu: the virtual GPU -- QEMU's ivshmem-doorbell device plus the vGPU bridge beside it.

A profile turns it on (``gpu: virtual``, ``vram: 16M``), a scenario's ``gpu:`` section
says which pixel program it runs (docs/vgpu.md, docs/scenarios.md).  This kind owns those
keys, assembles the program into the boot image's payload at plan time, starts the bridge
before QEMU and stops it after, and afterwards turns the bridge's statistics into the
``gpu.*`` metrics; ``reference: wgpu`` asks for the ``gpu-reference`` check.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import qemuopt
from ..yamlsrc import check_input_file, excerpt, parse_size
from .base import AfterContext, AttachContext, DeviceKind, Finding, PciId
from .registry import DEVICES

ID = PciId(0x1AF4, 0x1110, 0x050000)
BACKENDS = ("wgpu", "numpy")
REFERENCES = ("none", "wgpu")
DEFAULT_VRAM = 16 << 20
_STATS = re.compile(r"^stats busy=[0-9a-f]+ halt=[0-9a-f]+ wakes=([0-9a-f]+) reqs=([0-9a-f]+)")
_DENY = re.compile(r"^!DENY ")
DEFINE = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]{0,63}")
REGISTER = re.compile(r"r(?:[0-9]|1[0-5])")


@dataclass(frozen=True)
class GpuOptions:
    """What the virtual GPU runs (the scenario's ``gpu:`` section)."""

    program: Path
    backend: str = "wgpu"
    budget: int = 100_000  # steps per thread per executor run
    threads: int | None = None  # override the program's own
    memory: int | None = None
    reference: str = "none"  # wgpu: replay the trace through wgpu and NumPy afterwards
    defines: tuple[tuple[str, int], ...] = ()  # constants predefined for the assembler
    line: int | None = None  # of the section, for errors found at plan time


@dataclass(frozen=True)
class Vgpu:
    """The planned vGPU: options plus what planning found out."""

    options: GpuOptions
    vram: int
    program_sha256: str = ""
    threads: int = 0
    memory: int = 0
    payload: Path | None = None
    behind_root_port: bool = False
    kind = "vgpu"


@DEVICES.register
class VgpuKind(DeviceKind):
    name = "vgpu"
    section = "gpu"
    section_keys = ("program", "backend", "budget", "threads", "memory", "reference", "defines")
    profile_keys = ("gpu", "vram")
    spec = Vgpu
    metrics = {
        "gpu.dispatches": "executor runs the vGPU bridge made (each until every thread was "
        "blocked, halted or out of budget)",
        "gpu.instructions": "pixel instructions the GPU executed, all threads",
        "gpu.instructions_per_s": "gpu.instructions / time spent inside executor runs",
        "gpu.dispatch_ms.p50": "median time of one executor run (ms)",
        "gpu.dispatch_ms.mean": "mean time of one executor run (ms)",
        "gpu.requests": "requests the GPU posted to the guest CPU (ports, MMIO)",
        "gpu.denied": "requests the microkernel answered DENY",
        "gpu.dma_blocked": "device DMA the IOMMU blocked (`!DMAR` lines, microkernel/iommu.c)",
        "gpu.events": "events the guest posted to the GPU's event queue",
        "gpu.roundtrip_us.p50": "median mailbox round trip: request posted by the bridge -> its "
        "response visible to the executor (µs)",
        "gpu.roundtrip_us.p99": "99th percentile of the mailbox round trip (µs)",
        "gpu.requests_per_s": "requests served per second, from the program's load to its end "
        "(the mailbox's throughput when the program does little else)",
        "gpu.wakeups_per_request": "guest wake-ups from hlt per request served (the kernel's "
        "own counters, last `stats` line)",
    }

    # -- YAML ---------------------------------------------------------------------
    def parse_profile(self, f, ctx):
        gpu = f.choice("gpu", ("none", "virtual"), "none")
        raw = f.raw("vram", DEFAULT_VRAM)
        vram = parse_size(raw)
        if vram is None or vram < 1 << 16 or vram > 1 << 31 or vram & (vram - 1):
            f.error(
                "vram",
                f"{str(raw)[:40]!r} is not a usable VRAM size: a power of two from 64K to "
                "2G, e.g. 'vram: 16M'.",
            )
            vram = DEFAULT_VRAM
        return {"gpu": gpu or "none", "vram": vram}

    def parse_section(self, f, ctx):
        program = f.get("program", str, example="program: ../pxi/programs/hello.pxs")
        backend = f.choice("backend", BACKENDS, "wgpu")
        budget = f.get("budget", int, 100_000, example="budget: 100000")
        if budget is not None and not 1 <= budget <= (1 << 32) - 1:
            f.error("budget", "must be between 1 and 4294967295 steps.")
        threads = f.get("threads", int, None, example="threads: 4")
        if threads is not None and not 1 <= threads <= 1 << 20:
            f.error("threads", "must be between 1 and 1048576.")
        mem_raw = f.raw("memory")
        memory = None
        if mem_raw is not None:
            memory = parse_size(mem_raw)
            if memory is None or memory % 4 or memory > 1 << 31:
                f.error(
                    "memory",
                    f"{str(mem_raw)[:40]!r} is not a data memory size (a multiple of 4 "
                    "bytes up to 2G, e.g. 64K).",
                )
        reference = f.choice("reference", REFERENCES, "none")
        defines = self._defines(f)
        if not f.ok or program is None:
            return None
        path = Path(os.path.realpath(ctx.base_dir / program))
        if (problem := check_input_file(path, "GPU program", 16 << 20)) is not None:
            f.error("program", f"{problem} (Relative paths are relative to the scenario.)")
            return None
        if path.suffix not in (".pxs", ".png"):
            f.error("program", f"{path.name}: a GPU program is a .pxs source or a .png image.")
            return None
        return GpuOptions(
            program=path,
            backend=backend or "wgpu",
            budget=budget or 100_000,
            threads=threads,
            memory=memory,
            reference=reference or "none",
            defines=defines,
            line=f.line,
        )

    def _defines(self, f) -> tuple[tuple[str, int], ...]:
        raw = f.get("defines", dict, {}, example="defines: {WORKERS: 8}")
        out = []
        for name, value in (raw or {}).items():
            if not isinstance(name, str) or not DEFINE.fullmatch(name) or REGISTER.fullmatch(name):
                f.error(
                    "defines",
                    f"{excerpt(name)} is not a constant name (letters, digits, '_', '.'; not a register).",
                )
            elif (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not -(1 << 31) <= value < 1 << 32
            ):
                f.error("defines", f"{name}: {excerpt(value)} is not a 32-bit integer.")
            else:
                out.append((name, value))
        return tuple(out)

    def check(self, spec, profile, problem):
        if profile.settings.get("vgpu", {}).get("gpu") != "virtual":
            problem(
                f"profile {profile.name!r} has no virtual GPU (gpu: none); pick a profile "
                "with 'gpu: virtual', e.g. q35-tcg-vgpu."
            )

    # -- planning -----------------------------------------------------------------
    def plan(self, spec, profile):
        from ..vgpu import payload as pl

        o = spec if isinstance(spec, GpuOptions) else spec.options
        program = pl.load_program(o.program, dict(o.defines) or None)
        data = pl.encode(program, o.threads, o.memory)
        header = pl.decode_header(data)
        return Vgpu(
            options=o,
            vram=profile.settings["vgpu"]["vram"],
            program_sha256=program.sha256(),
            threads=header["threads"],
            memory=header["memory"],
            payload=pl.cached_payload(data),
        )

    def payload(self, spec):
        return spec.payload

    def to_json(self, spec: Vgpu) -> dict:
        o = spec.options
        return {
            "program": str(o.program),
            "program_sha256": spec.program_sha256,
            "backend": o.backend,
            "budget": o.budget,
            "threads": spec.threads,
            "memory": spec.memory,
            "vram": spec.vram,
            "reference": o.reference,
            "defines": dict(o.defines),
        }

    # -- the run --------------------------------------------------------------------
    def pci_ids(self, spec):
        return [ID]

    def helper(self, spec, run_dir):
        from ..vgpu.driver import BridgeProcess

        o = spec.options
        return BridgeProcess(run_dir, spec.vram, o.backend, o.budget)

    def attach(self, spec, ctx: AttachContext):
        # The bridge (started before QEMU) is listening on its ivshmem socket.
        ctx.add("-chardev", qemuopt.opts("socket", id="vgpu", path=ctx.helper.socket))
        ctx.add("-device", "ivshmem-doorbell,chardev=vgpu,vectors=1" + ctx.bus)

    def checks(self, spec):
        return [("gpu-reference", None)] if spec.options.reference != "none" else []

    def after(self, spec, ctx: AfterContext) -> list[Finding]:
        stats = ctx.helper.stats() if ctx.helper is not None else None
        if stats is None:
            ctx.sections["gpu"] = {"error": "the bridge wrote no statistics (bridge.json missing)"}
            return [
                Finding(
                    "vgpu",
                    "error" if ctx.outcome == "pass" else "info",
                    "the vGPU bridge left no statistics; see bridge.log",
                    "infra",
                )
            ]
        ctx.metrics.update(gpu_metrics(stats, ctx.lines))
        keep = ("backend", "adapter", "ended", "budget", "program", "threads")
        keep += ("roundtrip_us", "dispatch_ms", "problems", "posted", "posted_denied")
        keep += ("doorbells_in", "interrupts_out")
        keep += ("interrupts_guest_serving", "doorbells_bridge_awake")  # issue 17
        keep += ("spin_hits", "spin_misses")
        section = {k: stats.get(k) for k in keep}
        section["metrics"] = {k: v for k, v in ctx.metrics.items() if k.startswith("gpu.")}
        denials = [ln.text for ln in ctx.lines if _DENY.match(ln.text)]
        if denials:
            section["denials"] = denials[:20]
        blocked = [ln.text for ln in ctx.lines if ln.text.startswith("!DMAR ")]
        if blocked:
            section["dma_blocked"] = blocked[:20]
        ctx.sections["gpu"] = section
        for name in ("trace.jsonl", "bridge.json", "bridge.log"):
            if (ctx.run_dir / name).exists():
                ctx.artifacts[name] = name
        if stats.get("ended") == "crashed":
            why = stats.get("crash")
            why = f": {why}" if isinstance(why, str) and why else ""
            msg = f"the vGPU bridge crashed{why[:400]} (bridge.log has the traceback)"
            return [Finding("vgpu", "error", msg, "infra")]
        found = []
        if blocked:  # the verdict says so: a blocked DMA is a hostile or buggy driver
            found.append(
                Finding(
                    "vgpu", "info", f"the IOMMU blocked {len(blocked)} device DMA: {blocked[0]}"
                )
            )
        if ctx.outcome == "timeout" and stats.get("threads"):
            found.append(
                Finding("vgpu", "info", f"GPU threads at the end: {thread_summary(stats)}")
            )
        return found


def gpu_metrics(stats: dict, lines) -> dict[str, float]:
    m: dict[str, float] = {
        "gpu.dispatches": stats["dispatches"],
        "gpu.instructions": stats["steps"],
        "gpu.requests": stats["requests"],
        "gpu.denied": stats["denied"],
        "gpu.events": stats["events"],
        "gpu.dma_blocked": sum(ln.text.startswith("!DMAR ") for ln in lines),
    }
    busy_s = (stats.get("finished_s") or 0) - (stats.get("program_loaded_s") or 0)
    if stats.get("program_loaded_s") is not None and busy_s > 0 and stats["requests"]:
        m["gpu.requests_per_s"] = round(stats["requests"] / busy_s, 1)
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
