"""Posted writes through the bridge's mailbox (issue 17): flags in the ring, order with
the thread's later requests, a refusal reported as the thread's fault, the end declared
only once every posted write is answered, and the trace/replay recording them exactly.

The test plays the microkernel (tests/test_vgpu_unit.py's Guest) with a COM1 whose
scratch register (0x3ff) remembers what was written, as QEMU's 16550 does."""

from __future__ import annotations

import json

import pytest

from hil.vgpu import layout as L
from hil.vgpu.replay import replay
from hil.vgpu.trace import read
from pxi.asm import assemble_text
from tests.test_vgpu_unit import Guest, make_bridge

SCR, CF8 = 0x3FF, 0xCF8


class Uart:
    """The broker's answers: COM1 allowed (the scratch register keeps its byte), port
    0xcf8 refused, as microkernel/vgpu.c's allow-list would."""

    def __init__(self):
        self.scr = 0
        self.seen: list[dict] = []

    def __call__(self, e: dict) -> tuple[int, int]:
        self.seen.append(e)
        if not 0x3F8 <= e["addr"] < 0x400:
            return L.STATUS["DENY"], 0
        if e["kind"] == L.KINDS["PORT_OUT"] and e["addr"] == SCR:
            self.scr = e["value"] & 0xFF
        if e["kind"] == L.KINDS["PORT_IN"]:
            return 0, self.scr if e["addr"] == SCR else 0x60
        return 0, 0


PROGRAM = f"""
.threads 2
.memory 256
main:
    tid r1
    li32 r4, {SCR}
    shli r8, r1, 2
    addi r9, r1, 0x40
    outp r4, r9, 8        ; 0x40 + tid
    addi r9, r9, 0x10
    outp r4, r9, 8        ; 0x50 + tid: the read below must see this one
    in r6, r4, 8
    st32 r6, r8, 0
    halt
"""


def serve_until_done(bridge, guest, answer, rounds=50):
    for _ in range(rounds):
        bridge.serve()
        if bridge.done:
            return
        guest.serve(answer)
    raise AssertionError("the bridge never finished")


@pytest.mark.parametrize("backend", ["numpy", "wgpu"])
def test_a_posted_write_then_a_read_sees_it_and_the_replay_agrees(tmp_path, backend):
    bridge, vram, server = make_bridge(tmp_path, backend=backend)
    guest, uart = Guest(vram), Uart()
    guest.load(assemble_text(PROGRAM))
    serve_until_done(bridge, guest, uart)
    assert bridge.done == "halted"
    # one wake-up served all six: two threads x (posted, posted, read)
    posted = L.REQ_FLAGS["POSTED"]
    assert [(e["thread"], e["kind"], e["flags"]) for e in uart.seen] == [
        (0, 2, posted),
        (0, 2, posted),
        (0, 1, 0),
        (1, 2, posted),
        (1, 2, posted),
        (1, 1, 0),
    ]
    heap = vram.read_heap(8)
    assert heap == bytes([0x50, 0, 0, 0, 0x51, 0, 0, 0])  # each read saw its write done
    assert bridge.stats["posted"] == 4 and bridge.stats["posted_denied"] == 0
    assert bridge.stats["requests"] == bridge.stats["responses"] == 6
    assert len(bridge.stats["roundtrip_s"]) == 2  # the waits a thread saw: the reads
    bridge.close(tmp_path, "stopped")
    server.close()
    records = read(tmp_path / "trace.jsonl")
    run = next(r for r in records if r["t"] == "run")
    assert [row[-1] for row in run["requests"]] == [1, 1, 0, 1, 1, 0]
    respond = next(r for r in records if r["t"] == "respond")
    assert [it[-1] for it in respond["items"]] == [1, 1, 0, 1, 1, 0]
    for b in ("numpy", "wgpu"):
        assert replay(records, b).divergence is None
    # a posted write recorded as a waiting one is a divergence, named as such
    run["requests"][0][-1] = 0
    d = replay(records, "numpy").divergence
    assert d and d.where == "request #0 (run 1)"
    assert "expected port_out" in d.message and "got posted port_out" in d.message


def test_a_refused_posted_write_is_the_threads_fault(tmp_path):
    """The broker refuses it like any other request; the bridge faults the thread at
    the write (header fault fields, bridge stats), the other thread finishes, and the
    end waits for the answer: the state is FAULT, not HALTED."""
    prog = assemble_text(f"""
.threads 2
.memory 64
main:
    tid r1
    bnz r1, other
    li32 r2, {CF8}
    outp r2, r1, 32       ; refused
    li r3, 9
    st32 r3, r0, 0x10     ; went on meanwhile
    halt
other:
    li32 r4, {SCR}
    outp r4, r1, 8
    halt
""")
    bridge, vram, server = make_bridge(tmp_path)
    guest, uart = Guest(vram), Uart()
    guest.load(prog)
    bridge.serve()
    bridge.serve()  # loads and runs: both threads halt with posted writes out
    assert not bridge.done and bridge.finishing == "halted"
    assert vram.state == L.STATES["RUNNING"]  # not HALTED before the writes are done
    guest.serve(uart)
    bridge.serve()
    assert bridge.done == "fault" and vram.state == L.STATES["FAULT"]
    assert vram.get("fault") == 12 and vram.get("fault_thread") == 0  # DENIED
    write_pc = next(e["pc"] for e in uart.seen if e["addr"] == CF8)
    assert vram.get("fault_pc") == write_pc
    assert bridge.stats["posted_denied"] == 1 and bridge.stats["denied"] == 1
    assert vram.read_heap(64)[0x10:0x14] == (9).to_bytes(4, "little")
    threads = bridge.threads()
    assert [(t["status"], t["pc"]) for t in threads][0] == ("FAULTED", write_pc)
    assert threads[1]["status"] == "HALTED"
    bridge.close(tmp_path, "stopped")
    server.close()
    log = (tmp_path / "trace.jsonl").read_text()
    records = read(tmp_path / "trace.jsonl")
    assert any(it[3] and it[4] for r in records if r["t"] == "respond" for it in r["items"])
    for b in ("numpy", "wgpu"):
        assert replay(records, b).divergence is None, log


def test_a_version_1_trace_still_reads_with_no_posted_writes(tmp_path):
    """Traces recorded before posted writes (format 1) replay as before."""
    bridge, vram, server = make_bridge(tmp_path)
    guest, uart = Guest(vram), Uart()
    guest.load(
        assemble_text(f".memory 64\nli32 r4, {SCR}\nli r5, 3\nout r4, r5, 8\nin r6, r4, 8\nhalt\n")
    )
    serve_until_done(bridge, guest, uart)
    bridge.close(tmp_path, "stopped")
    server.close()
    v1 = []
    for line in (tmp_path / "trace.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["t"] == "start":
            rec["version"] = 1
        elif rec["t"] == "run":
            rec["requests"] = [row[:7] for row in rec["requests"]]
        elif rec["t"] == "respond":
            rec["items"] = [it[:4] for it in rec["items"]]
        v1.append(json.dumps(rec))
    path = tmp_path / "v1.jsonl"
    path.write_text("\n".join(v1) + "\n")
    records = read(path)
    assert all(
        len(row) == 8 and row[-1] == 0 for r in records if r["t"] == "run" for row in r["requests"]
    )
    assert replay(records, "numpy").divergence is None
    # a version-2 row of the wrong length is a malformed record, not a crash
    path.write_text((tmp_path / "trace.jsonl").read_text().replace(",0]]", "]]", 1))
    from hil.vgpu.trace import TraceError

    with pytest.raises(TraceError, match="malformed"):
        read(path)


def test_a_thread_faulted_by_a_refused_posted_write_gives_up_its_wait(tmp_path):
    """Its WAIT_EVENT leaves with it: the next event goes to the thread still waiting."""
    prog = assemble_text(f"""
.threads 2
.memory 64
main:
    tid r1
    li32 r5, {L.SOURCES["COM1_RX"]}
    bnz r1, waiter
    li32 r2, {CF8}
    outp r2, r1, 32       ; refused while this thread waits below
    wait r4, r5
    halt
waiter:
    li r3, 1
    st32 r3, r0, 0x20     ; a marker that it ran, then the same wait
    wait r4, r5
    st32 r4, r0, 0x10
    halt
""")
    bridge, vram, server = make_bridge(tmp_path)
    guest = Guest(vram)
    guest.load(prog)
    bridge.serve()
    bridge.serve()
    assert len(bridge.waiting) == 2
    guest.serve(Uart())
    bridge.serve()
    assert [w[0].thread for w in bridge.waiting] == [1]
    bridge.events.append({"source": L.SOURCES["COM1_RX"], "data": 0x41})
    bridge.serve_timeouts()
    assert bridge.done == "fault"
    assert vram.read_heap(64)[0x10:0x14] == (0x41).to_bytes(4, "little")
    bridge.close(tmp_path, "stopped")
    server.close()
    assert replay(read(tmp_path / "trace.jsonl"), "numpy").divergence is None


def test_trace_readers_take_version_2_rows(tmp_path):
    """The metrics that read the trace (net doorbells, NVMe rounds) accept the posted
    flag that ends every request row now (a regression: netmetrics unpacked 7 fields)."""
    from hil import netmetrics

    bar0 = 0x10000000
    prog = assemble_text(f"""
.memory 64
    li32 r2, {bar0 + netmetrics.TDT}
    li r3, 0
    li r4, 5
    mwrp r2, r4, 32       ; a posted TDT write
    mwr r2, r4, 32        ; a waiting one
    halt
""")
    bridge, vram, server = make_bridge(tmp_path)
    guest = Guest(vram)
    guest.load(prog)
    serve_until_done(bridge, guest, lambda e: (0, 0))
    bridge.close(tmp_path, "stopped")
    server.close()
    got = netmetrics.doorbells(tmp_path / "trace.jsonl", bar0)
    assert [db for _, db in got] == [netmetrics.TDT, netmetrics.TDT]
