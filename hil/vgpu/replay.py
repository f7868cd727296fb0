"""Replay a vGPU trace without QEMU: GPU-side behaviour vs a host-side reference.

The bridge recorded everything its executor did not do itself (trace.py): the program,
the initial memory, the heap bytes others wrote between runs, and every response.  A
fresh executor -- a host-side wgpu run, and the NumPy reference -- gets exactly those
inputs in the same order, run by run with the same step budgets.  Determinism of the
PXI machine (docs/pxi.md) then demands the same request stream, the same faults, the
same final thread states and the same final memory, byte for byte.  The first
difference is reported with the request index, the thread, the pc and its pixel, and
the disassembled instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import trace


@dataclass
class Divergence:
    backend: str
    where: str  # "request #12", "run 3 faults", "final memory", ...
    message: str

    def __str__(self) -> str:
        return f"{self.backend} replay diverges at {self.where}: {self.message}"


@dataclass
class ReplayResult:
    backend: str
    runs: int
    requests: int
    steps: int
    divergence: Divergence | None


def _program(start: dict):
    from pxi.image import Program

    p = start["program"]
    pixels = np.frombuffer(p["pixels"], dtype="<u4").copy()
    return Program(pixels, p["width"], name="trace")


def _where_in_program(program, pc: int) -> str:
    from pxi.disasm import describe

    x, y = program.xy(pc) if 0 <= pc < program.npix else (-1, -1)
    ins = describe(program.pixels, pc) if 0 <= pc < program.npix else "(outside the program)"
    return f"pc {pc} (pixel x={x}, y={y}) `{ins}`"


def _req_text(row) -> str:
    from pxi.machine import RequestKind

    seq, thread, pc, kind, width, addr, value, posted = row
    try:
        k = RequestKind(kind).name.lower()
    except ValueError:
        k = f"kind {kind}"
    p = "posted " if posted else ""
    return f"{p}{k} width={width} addr=0x{addr:x} value=0x{value:x}"


def replay(records: list[dict], backend: str) -> ReplayResult:
    from pxi.backends import create
    from pxi.executor import Response

    start = records[0]
    program = _program(start)
    p = start["program"]
    ex = create(backend, program, threads=p["threads"], memory_bytes=p["memory"], entry=p["entry"])
    runs = nreq = steps = 0

    def diverge(where: str, message: str) -> ReplayResult:
        return ReplayResult(backend, runs, nreq, steps, Divergence(backend, where, message))

    ended = False
    for rec in records[1:]:
        t = rec["t"]
        if ended:
            return diverge("end of trace", f"a '{t}' record follows the 'end' record")
        if t == "memory":
            ex.write_memory(0, rec["data"])
        elif t == "writes":
            for off, data in rec["ranges"]:
                ex.write_memory(off, data)
        elif t == "respond":
            ex.respond(
                [
                    Response(thread, value=value, deny=bool(deny), posted=bool(posted))
                    for _, thread, value, deny, posted in rec["items"]
                ]
            )
        elif t == "run":
            res = ex.run(rec["budget"])
            runs += 1
            steps += res.steps
            got = [
                [r.thread, r.pc, int(r.kind), r.width, r.address, r.value, int(r.posted)]
                for r in res.requests
            ]
            want = [row[1:] for row in rec["requests"]]
            for i in range(max(len(got), len(want))):
                if i < len(got) and i < len(want) and got[i] == want[i]:
                    continue
                w = rec["requests"][i] if i < len(want) else None
                g = [None, *got[i]] if i < len(got) else None

                def at(row) -> str:
                    if row is None:
                        return "no request"
                    return (
                        f"{_req_text(row)} from thread {row[1]} at "
                        f"{_where_in_program(program, row[2])}"
                    )

                return diverge(
                    f"request #{nreq + i} (run {runs})", f"expected {at(w)}; got {at(g)}"
                )
            nreq += len(want)
            gf = [[f.thread, f.pc, int(f.code), f.d0, f.d1] for f in res.faults]
            if gf != rec["faults"]:
                return diverge(f"run {runs} faults", f"expected {rec['faults']}, got {gf}")
            if res.steps != rec["steps"]:
                return diverge(f"run {runs}", f"expected {rec['steps']} steps, got {res.steps}")
        elif t == "end":
            ended = True
            st = ex.state()
            got = [[int(st.pc[i]), int(st.status[i]), int(st.steps[i])] for i in range(len(st.pc))]
            for i, (g, w) in enumerate(zip(got, rec["threads"], strict=False)):
                if g != w:
                    return diverge(
                        f"thread {i} final state",
                        f"expected pc/status/steps {w}, got {g} "
                        f"({_where_in_program(program, g[0])})",
                    )
            mem = ex.read_memory(0, p["memory"])
            if "data" in rec and mem != rec["data"]:
                a = np.frombuffer(mem, np.uint8)
                b = np.frombuffer(rec["data"], np.uint8)
                off = int(np.flatnonzero(a != b)[0])
                return diverge(
                    "final memory",
                    f"first difference at byte 0x{off:x}: "
                    f"expected 0x{b[off]:02x}, got 0x{a[off]:02x}",
                )
    if not ended:
        return diverge(
            "end of trace",
            f"incomplete: {len(records)} records and no 'end' record (the bridge was "
            "stopped before it finished the trace, or the file was cut); what happened "
            "after them cannot be compared",
        )
    return ReplayResult(backend, runs, nreq, steps, None)


def compare(path: Path, backends=("wgpu", "numpy")) -> list[ReplayResult]:
    records = trace.read(path)
    return [replay(records, b) for b in backends]
