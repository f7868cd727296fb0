"""Helpers shared by the pxi tests: run a program on both backends in lock step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pxi.asm import assemble_text
from pxi.backends import create
from pxi.executor import Response

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = REPO / "pxi" / "programs"


def asm(text: str):
    return assemble_text(text, "<test>")


def default_answer(req) -> Response:
    """A deterministic host: some requests denied, the rest answered with a value."""
    if req.address % 7 == 3:
        return Response(req.thread, deny=True)
    width = req.width or 32
    return Response(req.thread, (req.thread * 2654435761 + req.pc * 40503 + 12345) % (1 << width))


def run_both(
    program,
    threads=1,
    memory=4096,
    budget=10_000,
    rounds=50,
    answer=default_answer,
    setup=None,
    **kw,
):
    """Run numpy and wgpu side by side, answering requests identically; return both
    executors and their per-run logs (asserting request streams agree as they go)."""
    exs = [create(b, program, threads, memory, **kw) for b in ("numpy", "wgpu")]
    if setup:
        for ex in exs:
            setup(ex)
    logs = [[], []]
    for _ in range(rounds):
        results = [ex.run(budget) for ex in exs]
        for log, res in zip(logs, results, strict=True):
            log.append(
                (
                    res.requests,
                    res.faults,
                    res.steps,
                    res.counts,
                    res.out_of_budget,
                    res.max_thread_steps,
                )
            )
        assert logs[0][-1] == logs[1][-1], (
            f"run results differ:\n numpy {logs[0][-1]}\n wgpu  {logs[1][-1]}"
        )
        pend = exs[0].pending()
        assert pend == exs[1].pending()
        if not pend and results[0].out_of_budget == 0:
            break
        answers = [answer(r) for r in pend]
        denied = [ex.respond(answers) for ex in exs]
        assert denied[0] == denied[1]
    return exs, logs


def assert_same_state(exs) -> None:
    a, b = (ex.state() for ex in exs)
    diff = a.diff(b)
    assert not diff, "machine states differ: " + "; ".join(diff)
    ma = exs[0].read_memory(0, exs[0].memory_bytes)
    mb = exs[1].read_memory(0, exs[1].memory_bytes)
    if ma != mb:
        x, y = np.frombuffer(ma, np.uint8), np.frombuffer(mb, np.uint8)
        bad = np.flatnonzero(x != y)
        raise AssertionError(
            f"memory differs at {len(bad)} bytes, first at 0x{bad[0]:x}: {x[bad[0]]} vs {y[bad[0]]}"
        )
