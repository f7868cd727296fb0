"""The vGPU bridge without QEMU: the ivshmem protocol on a real socket, the mailbox and
bridge against hostile VRAM (hypothesis), and record -> replay with the test as guest."""

from __future__ import annotations

import mmap
import os
import socket
import struct
import threading
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
    assert _changed(a, a) == []


@pytest.mark.parametrize("size", [1 << 16, 1 << 24])
def test_regions_fit(size):
    r = L.Regions(size)
    assert r.req_off >= L.HEADER_SIZE and r.prog_off < r.heap_off
    assert r.heap_off + r.heap_size == size
    assert np.all(np.diff([r.req_off, r.rsp_off, r.evt_off, r.prog_off, r.heap_off]) > 0)
