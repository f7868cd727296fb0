"""The vGPU bridge without QEMU: the ivshmem protocol on a real socket, the mailbox and
bridge against hostile VRAM (hypothesis), and record -> replay with the test as guest."""

from __future__ import annotations

import mmap
import os
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.vgpu import layout as L
from hil.vgpu.bridge import Bridge, _changed
from hil.vgpu.ivshmem import BRIDGE_ID, GUEST_ID, IvshmemServer
from hil.vgpu.mailbox import Vram
from hil.vgpu.payload import encode
from hil.vgpu.replay import replay
from hil.vgpu.trace import TraceWriter, read

REPO = Path(__file__).resolve().parent.parent
VRAM = 1 << 16


def test_ivshmem_protocol_on_a_real_socket(tmp_path):
    fd = os.memfd_create("t")
    os.ftruncate(fd, VRAM)
    buf = mmap.mmap(fd, VRAM)
    Vram(buf, L.Regions(VRAM)).initialise()
    server = IvshmemServer(str(tmp_path / "s"), fd, vectors=1)
    server.listen()
    t = threading.Thread(target=server.accept, args=(5,))
    t.start()
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(tmp_path / "s"))
    t.join()
    msgs = []
    while len(msgs) < 5:  # version, id, shm, bridge's doorbell, our interrupt
        data, fds, _, _ = socket.recv_fds(client, 8, 1)
        msgs.append((struct.unpack("<q", data)[0], fds[0] if fds else None))
    assert [m[0] for m in msgs] == [0, GUEST_ID, -1, BRIDGE_ID, GUEST_ID]
    assert [m[1] is None for m in msgs] == [True, True, False, False, False]
    shm = mmap.mmap(msgs[2][1], VRAM)
    assert L.HEADER.get(shm, 0, "magic") == L.MAGIC  # the guest sees the bridge's VRAM
    os.eventfd_write(msgs[3][1], 1)  # the guest rings its doorbell
    assert server.wait(1) == "doorbell"
    server.interrupt_guest(0)  # the bridge raises the guest's MSI-X vector
    assert os.eventfd_read(msgs[4][1]) == 1
    client.close()
    assert server.wait(1) == "hangup"
    server.close()
    for _, f in msgs:
        if f is not None:
            os.close(f)
    os.close(fd)


class Guest:
    """The test plays the microkernel: serves requests by writing VRAM like it does."""

    def __init__(self, vram: Vram):
        self.v = vram
        self.req_tail = self.rsp_head = self.evt_head = 0
        self.out = b""

    def load(self, program, threads=None, memory=None) -> None:
        data = encode(program, threads, memory)
        h = L.PAYLOAD.read(data, 0)
        off = self.v.r.prog_off
        self.v.buf[off : off + h["pixels"] * 4] = data[L.PAYLOAD.size :]
        for k in ("width", "pixels", "entry", "threads", "memory"):
            self.v.put(f"prog_{k}", h[k])
        self.v.put("state", L.STATES["START"])

    def serve(self, answer) -> int:
        head, n = self.v.get("req_head"), 0
        while self.req_tail != head:
            e = L.REQUEST.read(
                self.v.buf, self.v.r.req_off + (self.req_tail % L.RING_ENTRIES) * L.REQUEST.size
            )
            status, value = answer(e)
            base = self.v.r.rsp_off + (self.rsp_head % L.RING_ENTRIES) * L.RESPONSE.size
            for k, val in (("seq", e["seq"]), ("status", status), ("value", value)):
                L.RESPONSE.put(self.v.buf, base, k, val)
            self.req_tail += 1
            self.rsp_head += 1
            n += 1
        self.v.put("req_tail", self.req_tail)
        self.v.put("rsp_head", self.rsp_head)
        return n


def com1(out: list):
    def answer(e):
        if e["kind"] == L.KINDS["PORT_IN"]:
            return 0, 0x60  # line status: transmitter empty
        if e["kind"] == L.KINDS["PORT_OUT"] and e["addr"] == 0x3F8:
            out.append(e["value"])
        return 0, 0

    return answer


def make_bridge(tmp_path, size=VRAM, backend="numpy"):
    vram = Vram(bytearray(size), L.Regions(size))
    vram.initialise()
    server = IvshmemServer(str(tmp_path / "unused"), -1)
    trace = TraceWriter(tmp_path / "trace.jsonl")
    return Bridge(vram, server, backend, 1000, trace), vram, server


def test_record_and_replay_with_external_writes(tmp_path):
    """The guest changes the heap while a thread waits; the trace records it and the
    replay, fed the same writes, matches byte for byte."""
    from pxi.asm import assemble_text

    prog = assemble_text("""
.threads 1
.memory 64
main:
    li r5, 0x3fd
    in r6, r5, 8          ; wait for the guest: meanwhile it writes our memory
    ld32 r7, r0, 16       ; read what it wrote
    st32 r7, r0, 32       ; and copy it
    halt
""")
    bridge, vram, server = make_bridge(tmp_path)
    guest = Guest(vram)
    guest.load(prog)
    bridge.serve()
    bridge.serve()  # loads, runs, posts the port read
    assert vram.get("req_head") == 1
    vram.write_heap(16, (0xCAFEF00D).to_bytes(4, "little"))  # "DMA" while it waits
    guest.serve(lambda e: (0, 0x60))
    bridge.serve()
    assert bridge.done == "halted"
    assert vram.read_heap(64)[32:36] == (0xCAFEF00D).to_bytes(4, "little")
    bridge.close(tmp_path, "stopped")
    server.close()
    records = read(tmp_path / "trace.jsonl")
    assert [r["t"] for r in records] == [
        "start",
        "memory",
        "run",
        "respond",
        "writes",
        "run",
        "end",
    ]
    for backend in ("numpy", "wgpu"):
        res = replay(records, backend)
        assert res.divergence is None, res.divergence
    # and a planted change in the recorded DMA is caught in the final memory
    records[4]["ranges"][0] = (16, (0xCAFEF00E).to_bytes(4, "little"))
    res = replay(records, "numpy")
    assert res.divergence and res.divergence.where == "final memory"


def test_a_wait_with_a_timeout_is_answered_when_no_event_comes(tmp_path):
    """WAIT_EVENT selector = source | ms << WAIT_TIMEOUT_SHIFT: with no event the bridge
    answers WAIT_TIMEOUT once the time has passed (not before), a wait without a timeout
    keeps waiting, and the replay reproduces the answer from the trace."""
    import time

    from pxi.asm import assemble_text

    prog = assemble_text(f"""
.threads 1
.memory 64
main:
    li32 r5, {L.SOURCES["IRQ"]} | (150 << {L.WAIT_TIMEOUT_SHIFT})
    wait r4, r5
    st32 r4, r0, 16
    li32 r5, {L.SOURCES["IRQ"]}
    wait r4, r5           ; no timeout: only an event ends it
    st32 r4, r0, 20
    halt
""")
    bridge, vram, server = make_bridge(tmp_path)
    Guest(vram).load(prog)
    bridge.serve()
    t0 = time.monotonic()
    bridge.serve()  # loads, runs: the thread waits
    assert 0 < bridge.wait_timeout_s(1.0) <= 0.15
    bridge.serve_timeouts()
    assert not bridge.done and vram.read_heap(64)[16:20] == bytes(4)  # too early
    time.sleep(max(0.0, t0 + 0.16 - time.monotonic()))
    bridge.serve_timeouts()
    assert vram.read_heap(64)[16:20] == L.WAIT_TIMEOUT.to_bytes(4, "little")
    assert bridge.stats["wait_timeouts"] == 1 and bridge.wait_timeout_s(1.0) == 1.0
    time.sleep(0.2)
    bridge.serve_timeouts()
    assert not bridge.done  # the second wait has no timeout
    bridge.events.append({"source": L.SOURCES["IRQ"], "data": 3})
    bridge.serve_timeouts()
    assert bridge.done == "halted" and vram.read_heap(64)[20:24] == (3).to_bytes(4, "little")
    bridge.close(tmp_path, "stopped")
    server.close()
    for backend in ("numpy", "wgpu"):
        res = replay(read(tmp_path / "trace.jsonl"), backend)
        assert res.divergence is None, res.divergence


def test_hello_through_the_mailbox(tmp_path):
    from pxi.asm import assemble_file

    bridge, vram, server = make_bridge(tmp_path)
    guest = Guest(vram)
    guest.load(assemble_file(REPO / "pxi" / "programs" / "hello.pxs"), memory=4096)
    out: list[int] = []
    for _ in range(200):
        bridge.serve()
        if bridge.done:
            break
        guest.serve(com1(out))
    assert bridge.done == "halted" and vram.state == L.STATES["HALTED"]
    assert bytes(out).endswith(b"Hello from GPU OS!\n")
    bridge.close(tmp_path, "stopped")
    server.close()


def test_requests_per_second_from_load_to_end(tmp_path):
    """gpu.requests_per_s (issue 17): the bridge stamps the program's end, and the metric
    is requests over the time from load to end -- absent when the program never ended."""
    import json

    from hil.devices.vgpu import gpu_metrics

    bridge, vram, server = make_bridge(tmp_path)
    guest = Guest(vram)
    guest.load(assemble_file_hello(), memory=4096)
    for _ in range(200):
        bridge.serve()
        if bridge.done:
            break
        guest.serve(com1([]))
    bridge.close(tmp_path, "stopped")
    server.close()
    stats = json.loads((tmp_path / "bridge.json").read_text())
    assert stats["finished_s"] > stats["program_loaded_s"] > 0
    m = gpu_metrics(stats, [])
    busy = stats["finished_s"] - stats["program_loaded_s"]
    assert m["gpu.requests_per_s"] == round(stats["requests"] / busy, 1) > 0
    assert "gpu.requests_per_s" not in gpu_metrics({**stats, "finished_s": None}, [])


def assemble_file_hello():
    from pxi.asm import assemble_file

    return assemble_file(REPO / "pxi" / "programs" / "hello.pxs")


def test_bad_program_fields_are_refused(tmp_path):
    bridge, vram, server = make_bridge(tmp_path)
    vram.put("prog_width", 64)
    vram.put("prog_pixels", 65)  # not a whole number of rows
    vram.put("state", L.STATES["START"])
    bridge.serve()
    assert vram.state == L.STATES["ERROR"] and vram.get("error") == L.ERRORS["BAD_SIZE"]
    bridge.close(tmp_path, "stopped")
    server.close()


GUEST_OWNED = [(L.Regions(VRAM).rsp_off, L.Regions(VRAM).evt_off + L.RING_ENTRIES * 16)]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_bridge_survives_garbage_in_vram(tmp_path_factory, data):
    """Whatever the guest writes -- header fields, ring indices, entries, program -- the
    bridge neither crashes nor writes the guest's rings, and VRAM keeps its size."""
    tmp = tmp_path_factory.mktemp("fuzz")
    bridge, vram, server = make_bridge(tmp)
    r = vram.r
    # a plausible program most of the time, so the run gets past loading
    if data.draw(st.booleans()):
        from pxi.asm import assemble_file

        Guest(vram).load(assemble_file(REPO / "pxi" / "programs" / "hello.pxs"), memory=4096)
    for _ in range(data.draw(st.integers(1, 6))):
        for _ in range(data.draw(st.integers(0, 12))):
            kind = data.draw(st.sampled_from(["field", "bytes"]))
            if kind == "field":
                f = data.draw(st.sampled_from(L.HEADER.fields))
                L.HEADER.put(
                    vram.buf, 0, f.name, data.draw(st.integers(0, (1 << (8 * f.size)) - 1))
                )
            else:
                off = data.draw(st.integers(0, r.prog_off + 256))
                blob = data.draw(st.binary(min_size=1, max_size=64))
                blob = blob[: max(0, VRAM - off)]
                vram.buf[off : off + len(blob)] = blob
        guest_rings = bytes(vram.buf[GUEST_OWNED[0][0] : GUEST_OWNED[0][1]])
        bridge.serve()
        assert len(vram.buf) == VRAM
        assert bytes(vram.buf[GUEST_OWNED[0][0] : GUEST_OWNED[0][1]]) == guest_rings
    bridge.close(tmp, "stopped")
    server.close()


def test_changed_ranges():
    a = bytes(300)
    b = bytearray(a)
    b[5] = 1
    b[10] = 1
    b[200:204] = b"abcd"
    assert _changed(a, bytes(b)) == [(5, 11), (200, 204)]
    assert _changed(a, bytes(b), gap=1) == [(5, 6), (10, 11), (200, 204)]
    assert _changed(a, a) == []


@pytest.mark.parametrize("size", [1 << 16, 1 << 24])
def test_regions_fit(size):
    r = L.Regions(size)
    assert r.req_off >= L.HEADER_SIZE and r.prog_off < r.heap_off
    assert r.heap_off + r.heap_size == size
    assert np.all(np.diff([r.req_off, r.rsp_off, r.evt_off, r.prog_off, r.heap_off]) > 0)


def test_request_space_counts_against_our_own_response_consumption():
    """Issue 9: the guest answering (req_tail advancing) frees no slot until the bridge
    has read the responses; posting earlier would overwrite unread responses."""
    from hil.vgpu.mailbox import Posted

    vram = Vram(bytearray(VRAM), L.Regions(VRAM))
    vram.initialise()
    guest = Guest(vram)
    vram.post_requests([Posted(i, i, 1, 8, 0, 0x3FD, 0) for i in range(L.RING_ENTRIES)])
    assert vram.request_space() == (0, None)
    assert guest.serve(lambda e: (0, e["seq"])) == L.RING_ENTRIES  # req_tail = 64
    assert vram.request_space() == (0, None)  # responses still unread: no room
    got, problem = vram.take("rsp")
    assert problem is None and [r["value"] for r in got] == list(range(L.RING_ENTRIES))
    assert vram.request_space() == (L.RING_ENTRIES, None)
    # a guest claiming more responses than requests in flight is ignored, not followed
    vram.put("rsp_head", 2 * L.RING_ENTRIES)
    got, problem = vram.take("rsp")
    assert got == [] and problem is not None
    assert vram.request_space() == (L.RING_ENTRIES, None)


def test_bridge_with_guest_answering_during_dispatches(tmp_path):
    """256 threads x 2 requests, the guest answering between every two bridge steps
    (as the real kernel does while a dispatch runs): all answered, all halted."""
    from pxi.asm import assemble_file

    bridge, vram, server = make_bridge(tmp_path)
    guest = Guest(vram)
    guest.load(assemble_file(REPO / "tests" / "programs" / "flood.pxs"), memory=4096)
    out: list[int] = []
    answer = com1(out)
    real_run = bridge._run

    def run_and_answer():  # the guest serves what was posted before the run, meanwhile
        guest.serve(answer)
        real_run()

    bridge._run = run_and_answer
    for _ in range(400):
        bridge.serve()
        if bridge.done:
            break
        guest.serve(answer)
    assert bridge.done == "halted", bridge.stats
    assert bytes(out).endswith(b"flood ok 00000100\n")
    assert bridge.stats["problems"] == 0
    bridge.close(tmp_path, "stopped")
    server.close()


def test_write_back_keeps_dma_that_landed_during_a_dispatch(tmp_path):
    """The executor changes bytes 0 and 32; a device DMAs byte 16..20 while the dispatch
    runs.  The write-back must not restore the executor's stale copy of 16..20, the trace
    must record the DMA before the next run, and the replay must agree."""
    from pxi.asm import assemble_text

    prog = assemble_text("""
.threads 1
.memory 64
main:
    li r7, 0x11
    st8 r7, r0, 0
    st8 r7, r0, 32
    li r5, 0x3fd
    in r6, r5, 8          ; blocks: the dispatch ends here
    ld32 r8, r0, 16       ; sees the DMA only in the next run
    st32 r8, r0, 48
    halt
""")
    bridge, vram, server = make_bridge(tmp_path)
    guest = Guest(vram)
    guest.load(prog)
    bridge.serve()  # loads
    real = bridge.ex.run

    def run_with_dma(budget):
        res = real(budget)
        vram.write_heap(16, (0xD0A0D0A0).to_bytes(4, "little"))  # lands mid-dispatch
        return res

    bridge.ex.run = run_with_dma
    bridge.serve()
    bridge.ex.run = real
    heap = vram.read_heap(64)
    assert heap[0] == 0x11 and heap[32] == 0x11
    assert heap[16:20] == (0xD0A0D0A0).to_bytes(4, "little")  # not clobbered
    guest.serve(lambda e: (0, 0x60))
    bridge.serve()
    assert bridge.done == "halted"
    assert vram.read_heap(64)[48:52] == (0xD0A0D0A0).to_bytes(4, "little")
    bridge.close(tmp_path, "stopped")
    server.close()
    records = read(tmp_path / "trace.jsonl")
    kinds = [r["t"] for r in records]
    assert kinds == ["start", "memory", "run", "respond", "writes", "run", "end"]
    assert records[4]["ranges"] == [(16, (0xD0A0D0A0).to_bytes(4, "little"))]
    for backend in ("numpy", "wgpu"):
        assert replay(records, backend).divergence is None


def _hello_trace(tmp_path) -> Path:
    from pxi.asm import assemble_file

    bridge, vram, server = make_bridge(tmp_path)
    guest = Guest(vram)
    guest.load(assemble_file(REPO / "pxi" / "programs" / "hello.pxs"), memory=4096)
    out: list[int] = []
    for _ in range(200):
        bridge.serve()
        if bridge.done:
            break
        guest.serve(com1(out))
    bridge.close(tmp_path, "stopped")
    server.close()
    return tmp_path / "trace.jsonl"


@pytest.mark.parametrize("cut", ["records", "mid-line"])
def test_truncated_trace_is_incomplete_never_a_pass(tmp_path, cut):
    """Issue 9: 20 of 94 records replayed as SAME, exit 0.  Without its end record a
    trace is incomplete: a divergence for the replay, exit 1 for `hil compare`."""
    import subprocess
    import sys

    path = _hello_trace(tmp_path)
    full = path.read_text()
    assert replay(read(path), "numpy").divergence is None  # the complete trace passes
    lines = full.splitlines(keepends=True)
    assert len(lines) > 10
    cut_text = "".join(lines[:8]) if cut == "records" else "".join(lines[:8]) + lines[8][:17]
    path.write_text(cut_text)
    records = read(path)
    assert len(records) == 8
    res = replay(records, "numpy")
    assert res.divergence and res.divergence.where == "end of trace"
    assert "incomplete" in res.divergence.message
    c = subprocess.run(
        [sys.executable, "-m", "hil.cli", "compare", str(path), "--backend", "numpy"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert c.returncode == 1 and "SAME" not in c.stdout and "incomplete" in c.stdout, c


def test_pixel_layout_include_is_current():
    path = REPO / "pxi" / "programs" / "lib" / "vgpu_layout.pxs"
    assert path.read_text() == L.pxs_constants(), (
        "pxi/programs/lib/vgpu_layout.pxs is stale: regenerate it with "
        "python -c 'from hil.vgpu import layout as L; print(L.pxs_constants(), end=\"\")'"
    )


def test_boot_info_fits_the_smallest_heap():
    assert L.BOOT_INFO_SIZE <= L.Regions(L.MIN_VRAM).heap_size
    assert L.FUNC.field("bar").at(5) + 8 <= L.FUNC.field("size").offset


def test_a_stop_inside_the_adapter_request_is_not_a_missing_adapter(monkeypatch):
    """Regression (H200 host): hil's SIGTERM reached the bridge while wgpu was asked for an
    adapter; pxi.gpu's `except Exception` turned the bridge's Stop into "no wgpu adapter
    found", and the run read as a bridge crash instead of QEMU's own start-up error."""
    import wgpu

    from hil.vgpu import bridge
    from pxi import gpu

    def interrupted(**kw):
        raise bridge.Stop()

    monkeypatch.setattr(gpu, "_GPU", None)
    monkeypatch.setattr(wgpu.gpu, "request_adapter_sync", interrupted)
    with pytest.raises(bridge.Stop):
        gpu.get_gpu()


def test_bridge_spins_for_an_answer_only_while_it_pays(tmp_path, monkeypatch):
    """spin() (issue 17): with a thread waiting for the guest's answer the bridge looks at
    the response ring before sleeping; an answer already there ends the spin at once, none
    ends it after spin_s (a miss); nothing to wait for, or recent round trips longer than
    the window, and it does not spin at all."""
    from types import SimpleNamespace

    from hil.vgpu import bridge as B

    br, vram, _ = make_bridge(tmp_path)
    assert br.spin() is False  # nothing pending
    br.pending[0] = (SimpleNamespace(posted=True), 0.0)
    assert br.spin() is False  # only a posted write is out: nobody waits for it
    br.pending[1] = (SimpleNamespace(posted=False), 0.0)
    br.spin_s = 0.002
    t = time.monotonic()
    assert br.spin() is False and time.monotonic() - t >= 0.002  # a miss, after the window
    assert br.stats["spin_misses"] == 1 and br.stats["spin_hits"] == 0
    vram.put("rsp_head", 1)  # the guest answered
    assert br.spin() is True and br.stats["spin_hits"] == 1
    br.rt_recent = 0.003  # answers lately took longer than the window: sleep at once
    vram.put("rsp_head", 0)
    assert br.spin() is False
    assert br.stats["spin_misses"] == 1 and br.stats["spin_hits"] == 1  # it did not look
    for bad in ("x", "-1", "1e9", "nan"):
        monkeypatch.setenv("HIL_BRIDGE_SPIN_US", bad)
        assert B.spin_from_env() == B.SPIN_S
    monkeypatch.setenv("HIL_BRIDGE_SPIN_US", "0")
    assert B.spin_from_env() == 0
