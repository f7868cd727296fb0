"""Posted writes (outp, mwrp): assembler, both executors alike, credits, order, refusal.

docs/pxi.md, "Posted writes": the thread goes on while it holds a posting credit, its
requests keep their issue order, a refused one faults the thread at the write."""

from __future__ import annotations

import pytest
from pxi_util import PROGRAMS, assert_same_state

from pxi.asm import assemble_text
from pxi.backends import create
from pxi.devices import Bus, drive
from pxi.disasm import disassemble
from pxi.errors import AsmError
from pxi.executor import Response
from pxi.machine import POST_CREDITS, FaultCode, RequestKind, Status

BACKENDS = ("numpy", "wgpu")
TESTS = PROGRAMS.parent.parent / "tests" / "programs"


def asm(text: str):
    return assemble_text(text, "<test>")


def test_assembler_encodes_and_disassembles_posted_writes():
    p = asm("outp r4, r7, 8\nmwrp r2, r3, 64\nhalt\n")
    assert int(p.pixels[0]) == ord("O") | 4 << 8 | 7 << 16 | 8 << 24
    assert int(p.pixels[1]) == ord("K") | 2 << 8 | 3 << 16 | 64 << 24
    text = disassemble(p)
    assert "outp r4, r7, 8" in text and "mwrp r2, r3, 64" in text


@pytest.mark.parametrize("bad", ["outp r4, r7, 64", "mwrp r2, r3, 12", "outp r4, 8"])
def test_assembler_refuses_bad_posted_writes(bad):
    with pytest.raises(AsmError):
        asm(bad + "\nhalt\n")


def _answer_all(ex, deny=lambda r: False) -> list:
    """Answer every unanswered posted write and pending request (posted ones first)."""
    answers = [Response(r.thread, deny=deny(r), posted=True) for r in ex.posted()]
    answers += [Response(r.thread, value=r.thread + 1, deny=deny(r)) for r in ex.pending()]
    return ex.respond(answers)


WRITE_WRITE_READ = """
.threads 5
.memory 256
main:
    tid r1
    li32 r4, 0x3ff
    li32 r2, 0x1000
    li r3, 0
    li r13, 3
again:
    outp r4, r1, 8
    mwrp r2, r13, 32
    in r6, r4, 8
    shli r8, r1, 2
    st32 r6, r8, 0        ; each thread its own word (race-free)
    addi r13, r13, -1
    bnz r13, again
    halt
"""


def test_both_executors_give_the_same_stream_with_posted_writes():
    """Per thread: its posted writes in issue order, then the request it blocks on."""
    p = asm(WRITE_WRITE_READ)
    exs = [create(b, p, threads=5, memory_bytes=256) for b in BACKENDS]
    for _ in range(10):
        res = [ex.run(1000) for ex in exs]
        assert res[0].requests == res[1].requests
        assert res[0].counts == res[1].counts and res[0].steps == res[1].steps
        if res[0].requests:
            r = res[0].requests
            assert [x.thread for x in r] == sorted(x.thread for x in r)
            for t in {x.thread for x in r}:
                mine = [x for x in r if x.thread == t]
                assert all(x.posted for x in mine[:-1]) and not mine[-1].posted
                assert mine[-1].kind == RequestKind.PORT_IN
        assert [ex.posted() for ex in exs][0] == exs[1].posted()
        assert exs[0].state().posted.tolist() == exs[1].state().posted.tolist()
        assert _answer_all(exs[0]) == _answer_all(exs[1])
        assert exs[0].state().posted.tolist() == [0] * 5
        if res[0].finished:
            break
    assert all(int(s) == Status.HALTED for s in exs[0].state().status)
    assert_same_state(exs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_credit_a_posted_write_waits(backend):
    """POST_CREDITS posted writes go out; the next one is an ordinary blocking out."""
    n = POST_CREDITS + 3
    p = asm(f"""
.threads 2
main:
    li r5, {n}
    li32 r4, 0x3ff
loop:
    outp r4, r5, 8
    addi r5, r5, -1
    bnz r5, loop
    halt
""")
    ex = create(backend, p, threads=2, memory_bytes=64)
    res = ex.run(10_000)
    per = [[r for r in res.requests if r.thread == t] for t in (0, 1)]
    for reqs in per:
        assert [r.posted for r in reqs] == [True] * POST_CREDITS + [False]
        assert [r.value for r in reqs] == list(range(n, n - POST_CREDITS - 1, -1))
        assert reqs[-1].kind == RequestKind.PORT_OUT
    assert ex.state().posted.tolist() == [POST_CREDITS] * 2
    assert res.counts["BLOCKED"] == 2
    # credits back for thread 0 only, its blocking write answered: it posts again
    ex.respond([Response(0, posted=True) for _ in range(POST_CREDITS)] + [Response(0)])
    assert ex.state().posted.tolist() == [0, POST_CREDITS]
    res = ex.run(10_000)
    assert [r.posted for r in res.requests] == [True, True]  # the last two writes
    assert res.counts["HALTED"] == 1 and res.counts["BLOCKED"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_posted_write_faults_its_thread_at_the_write(backend):
    p = asm("""
.threads 2
.memory 64
main:
    li32 r2, 0xcf8
    li32 r3, 0x80000000
    outp r2, r3, 32
    li r4, 7
    st32 r4, r0, 0x10
    li r5, 0x3fd
    in r6, r5, 8
    halt
""")
    ex = create(backend, p, threads=2, memory_bytes=64)
    res = ex.run(1000)
    assert [(r.thread, r.posted) for r in res.requests] == [
        (0, True),
        (0, False),
        (1, True),
        (1, False),
    ]
    write_pc = res.requests[0].pc
    # thread 0's write is refused; its read is answered in the same batch (ignored)
    faults = ex.respond(
        [
            Response(0, posted=True, deny=True),
            Response(0, value=0x60),
            Response(1, posted=True),
            Response(1, value=0x60),
        ]
    )
    assert faults == [faults[0]] and faults[0].thread == 0 and faults[0].pc == write_pc
    assert faults[0].code == FaultCode.DENIED
    assert (faults[0].d0, faults[0].d1) == (int(RequestKind.PORT_OUT) << 8 | 32, 0xCF8)
    st = ex.state()
    assert int(st.status[0]) == Status.FAULTED and int(st.pc[0]) == write_pc
    assert st.fault[0].tolist() == [FaultCode.DENIED, faults[0].d0, 0xCF8]
    assert ex.read_memory(0x10, 4) == (7).to_bytes(4, "little")  # it went on meanwhile
    assert st.posted.tolist() == [0, 0] and ex.pending() == [] and ex.posted() == []
    res = ex.run(1000)
    assert res.finished and res.counts == {**res.counts, "HALTED": 1, "FAULTED": 1}


def test_a_late_answer_for_a_thread_a_refusal_faulted_is_ignored():
    p = asm("li32 r2, 0xcf8\noutp r2, r2, 32\nin r6, r2, 8\nhalt\n")
    for backend in BACKENDS:
        ex = create(backend, p, threads=1, memory_bytes=64)
        ex.run(100)
        assert ex.respond([Response(0, posted=True, deny=True)])  # the read still pending
        assert ex.respond([Response(0, value=1)]) == []  # answered later: ignored
        assert int(ex.state().status[0]) == Status.FAULTED


def test_an_answer_for_a_posted_write_that_was_never_issued_is_a_caller_bug():
    ex = create("numpy", asm("halt\n"), threads=1, memory_bytes=64)
    ex.run(10)
    with pytest.raises(ValueError, match="no posted write"):
        ex.respond([Response(0, posted=True)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_drive_serves_posted_writes_in_order_and_reports_the_refusal(backend):
    """pxi.devices.drive answers a thread's posted writes before its read: the
    scratch-register reads see every write done; the refused one faults thread 1."""
    from pxi.asm import assemble_file

    p = assemble_file(TESTS / "posted.pxs")
    ex = create(backend, p, threads=2, memory_bytes=4096)
    bus = Bus()
    r = drive(ex, bus)
    assert bytes(bus.com1.output).endswith(b"posted ok\n")
    assert [(q.thread, q.address, q.posted) for q in bus.denied] == [(1, 0xCF8, True)]
    assert [(f.thread, f.code) for f in r.faults] == [(1, FaultCode.DENIED)]
    st = ex.state()
    assert st.status.tolist() == [Status.HALTED, Status.FAULTED]
    assert ex.read_memory(0x40, 4) == (7).to_bytes(4, "little")
    assert sum(q.posted for q in r.requests) >= POST_CREDITS + 3
