"""The microkernel as privilege broker, attacked by a hostile "bridge".

The test plays the GPU side itself -- a real ivshmem server, real VRAM, the real kernel in
QEMU (TCG) -- and posts requests no honest program would: forbidden ports and addresses,
absurd widths and kinds, addresses at the top of the 64-bit space, kernel memory, the
vGPU's own registers, ring counters that make no sense.  A Python model of the allow-list
(docs/vgpu.md) predicts each answer; the kernel must give exactly that answer, never
fault, and keep serving the console.  The model's second half, ``dma_model``, says what
a device the GPU programs may reach by DMA (the IOMMU's part; test_iommu.py).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import re
import struct
import time

import pytest

from hil import image
from hil.console import Console
from hil.machine import MachineConfig, QemuMachine
from hil.vgpu import layout as L
from hil.vgpu import payload
from hil.vgpu.ivshmem import IvshmemServer
from hil.vgpu.mailbox import Vram

VRAM = 1 << 20
COM1 = (0x3F8, 0x400)
DMA = (L.DMA_BASE, L.DMA_BASE + L.DMA_SIZE)
_BAR = re.compile(r"bar\d=(io|m32|m64)p?:([0-9a-f]+)/([0-9a-f]+)")


def allowed_model(kind: int, width: int, addr: int, ranges) -> bool:
    if kind not in (1, 2, 3, 4) or width % 8:
        return False
    io = kind <= 2
    nbytes = width // 8
    if nbytes not in ((1, 2, 4) if io else (1, 2, 4, 8)):
        return False
    if not io and addr % nbytes:
        return False
    end = addr + nbytes
    if io:
        return (
            COM1[0] <= addr
            and end <= COM1[1]
            or any(b <= addr and end <= e for k, b, e in ranges if k == "io")
        )
    return (
        DMA[0] <= addr
        and end <= DMA[1]
        or any(b <= addr and end <= e and e <= 1 << 32 for k, b, e in ranges if k != "io")
    )


def dma_model(addr: int, nbytes: int, vram: tuple[int, int]) -> bool:
    """May a device DMA [addr, addr + nbytes)?  With the guest IOMMU (microkernel/iommu.c,
    docs/vgpu.md's threat model) only inside the DMA window or the vGPU's VRAM (BAR2,
    [base, end)): the broker lets the GPU program a device, the IOMMU bounds what the
    device then reaches.  tests/integration/test_iommu.py holds the kernel to it."""
    end = addr + nbytes
    return any(b <= addr and end <= e for b, e in (DMA, vram))


class HostileBridge:
    def __init__(self, vram: Vram, server: IvshmemServer, console: Console):
        self.v, self.s, self.c = vram, server, console
        self.head = self.tail = self.seq = 0

    def post(self, reqs) -> list[dict]:
        """Post requests, interrupt the guest, collect its responses."""
        for kind, width, addr, value in reqs:
            base = self.v.r.req_off + (self.head % L.RING_ENTRIES) * L.REQUEST.size
            for k, val in (
                ("seq", self.seq),
                ("thread", 0),
                ("kind", kind),
                ("width", width),
                ("pc", 0),
                ("addr", addr),
                ("value", value),
            ):
                L.REQUEST.put(self.v.buf, base, k, val)
            self.head += 1
            self.seq += 1
        self.v.put("req_head", self.head % (1 << 32))
        self.s.interrupt_guest(0)
        deadline = time.monotonic() + 10
        while self.v.get("rsp_head") != self.head % (1 << 32):
            assert time.monotonic() < deadline, "the kernel stopped answering"
            self.s.wait(0.02)
            ln = self.c.read_line(0.01)
            assert ln is None or not ln.text.startswith(("!EXC", "!PANIC")), ln.text
        out = []
        while self.tail != self.head:
            base = self.v.r.rsp_off + (self.tail % L.RING_ENTRIES) * L.RESPONSE.size
            out.append(L.RESPONSE.read(self.v.buf, base))
            self.tail += 1
        return out


@contextlib.contextmanager
def booted(tmp_path, image_cache, vram_size=VRAM, boot="pvh", payload=None, initialise=True):
    """The real kernel in QEMU with a VRAM we own; yields (bridge, ranges, console, m,
    lines up to @tsc).  boot: pvh (qboot; the kernel places BARs) or bios (SeaBIOS)."""
    img = image.build(image.ImageRecipe(payload=payload), cache_root=image_cache)
    fd = os.memfd_create("vram")
    os.ftruncate(fd, vram_size)
    buf = mmap.mmap(fd, vram_size)
    vram = Vram(buf, L.Regions(vram_size))
    if initialise:
        vram.initialise()
    server = IvshmemServer(str(tmp_path / "iv.sock"), fd)
    server.listen()
    cfg = MachineConfig(
        name="it-broker",
        machine="q35",
        accel="tcg",
        cpu=None,
        memory_mib=128,
        cpus=1,
        acpi=False,
        boot=boot,
        disk=img.disk if boot == "bios" else None,
        kernel=img.elf if boot == "pvh" else None,
        initrd=img.payload if boot == "pvh" else None,
        device_args=(
            "-chardev",
            f"socket,id=vg,path={tmp_path / 'iv.sock'}",
            "-device",
            "ivshmem-doorbell,chardev=vg,vectors=1",
        ),
    )
    try:
        with QemuMachine(cfg, tmp_path) as m:
            server.accept(30)
            console = Console(m.console_fd, m.launched, tmp_path / "serial.log")
            lines = []
            while not any(ln.text.startswith(("@tsc", "!EXC", "!PANIC")) for ln in lines):
                ln = console.read_line(30)
                assert ln is not None, "the kernel did not boot"
                lines.append(ln)
                m.release_console()
            ranges = []
            for ln in lines:
                if ln.text.startswith("pci ") and " 1af4:1110 " not in ln.text:
                    for kind, base, size in _BAR.findall(ln.text):
                        ranges.append((kind, int(base, 16), int(base, 16) + int(size, 16)))
            try:
                yield HostileBridge(vram, server, console), ranges, console, m, lines
            finally:
                console.close()
    finally:
        server.close()
        buf.close()
        os.close(fd)


@pytest.fixture
def machine(tmp_path, image_cache):
    with booted(tmp_path, image_cache) as (bridge, ranges, console, m, lines):
        yield bridge, ranges, console, m, lines


def vgpu_bar(lines, n: int) -> int:
    """BAR n of the vGPU as the kernel listed it (`pci ... 1af4:1110 ... barN=...`)."""
    ln = next(ln.text for ln in lines if ln.text.startswith("pci ") and " 1af4:1110 " in ln.text)
    m = re.search(rf"bar{n}=(?:io|m32|m64)p?:([0-9a-f]+)/", ln)
    assert m, ln
    return int(m.group(1), 16)


def served_stats(console) -> str:
    console.send_line("stats")
    deadline = time.monotonic() + 10
    while True:
        ln = console.read_line(max(0.1, deadline - time.monotonic()))
        assert ln is not None, "no answer to 'stats'"
        assert not ln.text.startswith(("!EXC", "!PANIC")), ln.text
        if ln.text.startswith("stats "):
            return ln.text


def test_hostile_requests_get_exactly_the_policy(machine):
    bridge, ranges, console, m, lines = machine
    mem_bars = [(b, e) for k, b, e in ranges if k != "io"]
    vgpu_bar0 = vgpu_bar(lines, 0)  # from the kernel's own listing
    dangerous = [
        (3, 8, 0xFFFFFFFFFFFFFFFF, 0),  # top of the address space: a + 1 wraps to 0
        (3, 64, 0xFFFFFFFFFFFFFFF8, 0),
        (1, 8, 0xFFFFFFFFFFFFFFFF, 0),  # a "port" that wraps
        (2, 8, 0x100003F8, 0x41),  # COM1 plus garbage in the high bits
        (4, 32, 0x1000, 0),  # page tables
        (4, 64, 0x100000, 0),  # the kernel's own code
        (3, 32, 0xFEE000B0, 0),  # the local APIC
        (4, 32, vgpu_bar0 + 12, 0),  # the vGPU's own Doorbell
        (4, 64, vgpu_bar(lines, 2) + 0x80, 0),  # the vGPU's own VRAM (ring counters)
        (2, 32, 0xCF8, 0x80000000),  # PCI configuration address
        (3, 32, 0xB0000000, 0),  # ECAM
        (0, 8, 0x3F8, 0),  # kind 0
        (9, 8, 0x3F8, 0),  # kind out of range
        (1, 12, 0x3F8, 0),  # width not a multiple of 8
        (1, 64, 0x3F8, 0),  # 64-bit port access
        (3, 24, DMA[0], 0),  # 3-byte MMIO
        (3, 32, DMA[0] + 2, 0),  # misaligned
        (3, 32, DMA[1] - 2, 0),  # straddles the end of the DMA window
        (1, 8, 0x3FD, 0),  # COM1 line status: allowed
        (3, 64, DMA[0], 0),  # DMA window: allowed
        (4, 32, DMA[0] + 8, 0xDEADBEEF),
    ]
    rng = random.Random(1234)
    fuzz = []
    for _ in range(400):
        kind = rng.choice([1, 2, 3, 4, 3, 3, rng.randrange(256)])
        width = rng.choice([8, 16, 32, 64, rng.randrange(256)])
        pick = rng.random()
        if pick < 0.3 and mem_bars:
            b, e = rng.choice(mem_bars)
            addr = rng.randrange(b - 64, e + 64)
        elif pick < 0.5:
            addr = rng.randrange(DMA[0] - 64, DMA[1] + 64)
        elif pick < 0.6:
            addr = rng.randrange(0x3F0, 0x408)
        else:
            addr = rng.getrandbits(rng.choice([16, 32, 64]))
        if kind in (2, 4) and allowed_model(kind, width, addr, ranges):
            if not (DMA[0] <= addr < DMA[1]) and not COM1[0] <= addr < COM1[1]:
                # an allowed write to a real device's register (AHCI, SMBus...) could
                # start its DMA anywhere: that one becomes a read.  Denied writes stay
                # writes -- they are what the broker must refuse.
                kind -= 1
        fuzz.append((kind % 256, width % 256, addr, rng.getrandbits(64)))
    assert sum(k in (2, 4) and not allowed_model(k, w, a, ranges) for k, w, a, _ in fuzz) > 50
    requests = dangerous + fuzz
    answers = []
    for i in range(0, len(requests), L.RING_ENTRIES):  # full rings
        answers += bridge.post(requests[i : i + L.RING_ENTRIES])
    for req, rsp in zip(requests, answers, strict=True):
        want = allowed_model(req[0], req[1], req[2], ranges)
        assert rsp["status"] == (0 if want else 1), f"request {req}: got {rsp}"
    assert answers[-3 - len(fuzz)]["value"] & 0x60  # the line-status read saw "empty"
    # nonsense ring counters: the kernel serves nothing and carries on.  One past a
    # full ring (65 posted) is an overflow just like 1000.
    for ahead in (L.RING_ENTRIES + 1, 1000, (1 << 32) - 1):
        bridge.v.put("req_head", (bridge.head + ahead) % (1 << 32))
        bridge.s.interrupt_guest(0)
        time.sleep(0.3)
        assert bridge.v.get("rsp_head") == bridge.tail % (1 << 32), ahead
    bridge.v.put("req_head", bridge.head % (1 << 32))
    assert len(bridge.post([(1, 8, 0x3FD, 0)])) == 1  # still serving
    # the ring wraps many times over: 20 full rings of line-status reads
    for _ in range(20):
        got = bridge.post([(1, 8, 0x3FD, 0)] * L.RING_ENTRIES)
        assert [r["status"] for r in got] == [0] * L.RING_ENTRIES
    served_stats(console)
    assert m.poll() is None


def test_boot_info_lists_what_the_kernel_enumerated(tmp_path, image_cache):
    """The boot info at heap offset 0 (docs/drivers.md) holds every function of the
    listing with its BARs, written before START; and MSI-X routing for devices."""
    from pxi.asm import assemble_text

    prog = assemble_text(".threads 1\n.memory 4096\nmain:\n halt\n")
    pay = tmp_path / "p.pxip"
    pay.write_bytes(payload.encode(prog))
    with booted(tmp_path, image_cache, payload=pay) as (bridge, ranges, console, m, lines):
        deadline = time.monotonic() + 20
        while bridge.v.state != L.STATES["START"]:
            assert time.monotonic() < deadline, "no START"
            time.sleep(0.05)
        heap = bridge.v.r.heap_off
        buf = bridge.v.buf
        assert L.BOOT.get(buf, heap, "magic") == L.BOOT_MAGIC | L.VERSION << 32
        assert L.BOOT.get(buf, heap, "heap_phys") == vgpu_bar(lines, 2) + VRAM // 2
        listed = [ln.text for ln in lines if ln.text.startswith("pci ")]
        assert L.BOOT.get(buf, heap, "nfunc") == min(len(listed), L.MAX_FUNCS)
        for i, text in enumerate(listed[: L.MAX_FUNCS]):
            f = heap + L.BOOT_FUNCS_OFF + i * L.FUNC.size
            ident = re.match(r"pci (\w+):(\w+)\.(\w) (\w+):(\w+) (\w+)", text)
            bus, dev, fn, ven, did, cls = (int(x, 16) for x in ident.groups())
            assert L.FUNC.get(buf, f, "bdf") == bus << 8 | dev << 3 | fn, text
            assert L.FUNC.get(buf, f, "id") == ven | did << 16, text
            assert L.FUNC.get(buf, f, "classcode") >> 8 == cls, text
            bars = {int(n): int(b, 16) for n, b in re.findall(r"bar(\d)=\w+?:([0-9a-f]+)/", text)}
            for n in range(6):
                got = struct.unpack_from("<Q", buf, f + L.FUNC.field("bar").at(n))[0]
                assert got == bars.get(n, 0), (text, n)
            irq = L.FUNC.get(buf, f, "irq")
            if ven == 0x1AF4 and did == 0x1110:
                assert irq == L.GUEST_IRQ_VECTOR
            else:
                assert irq in (0, L.DEV_VECTOR + i)
        served_stats(console)


def test_payload_of_another_version_is_refused(tmp_path, image_cache):
    from pxi.asm import assemble_text

    data = bytearray(payload.encode(assemble_text(".threads 1\nmain:\n halt\n")))
    L.PAYLOAD.put(data, 0, "version", L.PAYLOAD_VERSION + 1)
    pay = tmp_path / "p.pxip"
    pay.write_bytes(bytes(data))
    with booted(tmp_path, image_cache, payload=pay) as (bridge, ranges, console, m, lines):
        ln = console.read_line(20)
        assert ln is not None and ln.text == "!PANIC payload", ln
        assert m.wait_exit(10) == 0x1F << 1 | 1
        assert bridge.v.state == L.STATES["BOOT"]  # nothing was started


def test_vram_above_4g_is_not_touched(tmp_path, image_cache):
    """SeaBIOS puts a 2 GiB 64-bit BAR2 above 4 GiB, outside the kernel's identity map:
    vgpu_attach must leave it alone (before: a page fault reading the magic)."""
    size = 2 << 30
    with booted(tmp_path, image_cache, vram_size=size, boot="bios") as (
        bridge,
        ranges,
        console,
        m,
        lines,
    ):
        assert vgpu_bar(lines, 2) >= 1 << 32, [ln.text for ln in lines]
        assert not any(ln.text.startswith("!EXC") for ln in lines)
        served_stats(console)
        assert m.poll() is None
