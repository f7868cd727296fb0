"""The VRAM layout and mailbox protocol of the virtual GPU, defined once.

This module is the single source of truth for every offset, size, state and code that
the microkernel (C) and the vGPU bridge (Python) share:

* the image builder turns it into ``vgpu_layout.h`` for the kernel (``c_header``);
* the bridge and the replay tools read VRAM through ``Struct`` views built from it;
* docs/vgpu.md's tables are generated from it (``doc_tables``; tests keep them equal).

VRAM is BAR2 of QEMU's ``ivshmem-doorbell`` device: a memfd that the guest sees as PCI
memory and the bridge maps.  Little-endian throughout.  See docs/vgpu.md for the protocol
(who writes what, when each side rings the other).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pxi.machine import RequestKind

VERSION = (
    2  # 2: boot info in the heap, device interrupts as events, no heap_phys/dma_* in the header
)
MAGIC = 0x47565850  # b"PXVG" read as a little-endian u32
PAYLOAD_MAGIC = 0x50495850  # b"PXIP": the program payload in the boot image
PAYLOAD_VERSION = (
    2  # 2: boot info in the heap, device interrupts as events, no heap_phys/dma_* in the header
)

HEADER_SIZE = 0x1000
RING_ENTRIES = 64  # per ring; a power of two, so indices wrap with a mask
MSIX_VECTOR = 0  # the ivshmem interrupt vector both directions use
GUEST_IRQ_VECTOR = 0x28  # the IDT vector the kernel programs into MSI-X entry 0
# Device interrupts (docs/drivers.md): MSI-X entry 0 of boot-info function i (i < MAX_FUNCS,
# not the vGPU) is programmed with IDT vector DEV_VECTOR + i; the kernel turns it into an
# event (source IRQ, data i).  16 vectors: one APIC priority class, one ISR word.
DEV_VECTOR = 0x30
MAX_FUNCS = 16  # PCI functions the boot info lists (the first ones enumerated)
BOOT_MAGIC = 0x49425850  # b"PXBI": the boot info at the start of the heap

# Where the kernel puts the guest-RAM DMA window (MMIO requests may touch RAM only here).
DMA_BASE = 0x2000000  # 32 MiB
DMA_SIZE = 0x1000000  # 16 MiB


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    ctype: str  # u8 u16 u32 u64
    writer: str  # who writes it: bridge | guest
    doc: str
    count: int = 1  # an array of `count` elements (get/put reach element 0; see at())

    @property
    def elem(self) -> int:
        return {"u8": 1, "u16": 2, "u32": 4, "u64": 8}[self.ctype]

    @property
    def size(self) -> int:
        return self.elem * self.count

    def at(self, i: int) -> int:
        """Offset of element i of an array field."""
        assert 0 <= i < self.count
        return self.offset + i * self.elem

    @property
    def fmt(self) -> str:
        return {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q"}[self.ctype]


@dataclass(frozen=True)
class Struct:
    """A fixed layout: read/write fields of a buffer at a base offset."""

    name: str
    size: int
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def get(self, buf, base: int, name: str) -> int:
        f = self.field(name)
        return struct.unpack_from(f.fmt, buf, base + f.offset)[0]

    def put(self, buf, base: int, name: str, value: int) -> None:
        f = self.field(name)
        struct.pack_into(f.fmt, buf, base + f.offset, value)

    def read(self, buf, base: int) -> dict[str, int]:
        return {f.name: struct.unpack_from(f.fmt, buf, base + f.offset)[0] for f in self.fields}


def _check(s: Struct) -> Struct:
    end = 0
    for f in s.fields:
        assert f.offset % f.elem == 0, f"{s.name}.{f.name} is misaligned"
        assert f.offset >= end, f"{s.name}.{f.name} overlaps the field before it"
        end = f.offset + f.size
    assert end <= s.size
    return s


B, G = "bridge", "guest"

HEADER = _check(
    Struct(
        "header",
        HEADER_SIZE,
        (
            Field("magic", 0x00, "u32", B, "`PXVG` (0x47565850): this BAR is a pxOS vGPU"),
            Field("version", 0x04, "u32", B, f"layout version (this document: {VERSION})"),
            Field("vram_size", 0x08, "u32", B, "bytes of VRAM (BAR2 size)"),
            Field("state", 0x0C, "u32", B + "+" + G, "the state machine below"),
            Field("req_off", 0x10, "u32", B, "request ring (GPU -> CPU): offset"),
            Field("rsp_off", 0x14, "u32", B, "response ring (CPU -> GPU): offset"),
            Field("evt_off", 0x18, "u32", B, "event queue (CPU -> GPU): offset"),
            Field("ring_entries", 0x1C, "u32", B, "entries per ring (a power of two)"),
            Field("prog_off", 0x20, "u32", B, "program pixels: offset"),
            Field("prog_max", 0x24, "u32", B, "program pixels: bytes available"),
            Field("heap_off", 0x28, "u32", B, "data heap (the program's data memory): offset"),
            Field("heap_size", 0x2C, "u32", B, "data heap: bytes available"),
            # Written by the guest before it sets state START (copied from the payload header).
            Field("prog_width", 0x40, "u32", G, "program image width (pixels)"),
            Field("prog_pixels", 0x44, "u32", G, "program size (pixels; a multiple of the width)"),
            Field("prog_entry", 0x48, "u32", G, "pc where every thread starts"),
            Field("prog_threads", 0x4C, "u32", G, "threads to run"),
            Field(
                "prog_memory", 0x50, "u32", G, "data memory the program needs (bytes, <= heap_size)"
            ),
            # Ring indices: free-running u32 counters; entry = index & (ring_entries - 1).
            Field("req_head", 0x80, "u32", B, "requests posted (producer: bridge)"),
            Field("req_tail", 0x84, "u32", G, "requests consumed (consumer: guest)"),
            Field("rsp_head", 0x88, "u32", G, "responses posted (producer: guest)"),
            Field("rsp_tail", 0x8C, "u32", B, "responses consumed (consumer: bridge)"),
            Field("evt_head", 0x90, "u32", G, "events posted (producer: guest)"),
            Field("evt_tail", 0x94, "u32", B, "events consumed (consumer: bridge)"),
            Field(
                "evt_dropped", 0x98, "u32", G, "events the guest dropped because the queue was full"
            ),
            # Bridge status, for the guest's log and the host's report.
            Field(
                "fault",
                0xA0,
                "u32",
                B,
                "state FAULT: the PXI fault code of the first faulting thread",
            ),
            Field("fault_thread", 0xA4, "u32", B, "state FAULT: that thread"),
            Field("fault_pc", 0xA8, "u32", B, "state FAULT: its pc"),
            Field(
                "error", 0xAC, "u32", B, "state ERROR: why the bridge refused the program (ERRORS)"
            ),
            Field("steps", 0xB0, "u64", B, "pixel instructions executed so far, all threads"),
            Field("dispatches", 0xB8, "u32", B, "executor runs so far"),
        ),
    )
)

REQUEST = _check(
    Struct(
        "request",
        32,
        (
            Field("seq", 0, "u32", B, "request number (0, 1, 2, ...)"),
            Field("thread", 4, "u32", B, "the GPU thread that asked"),
            Field("kind", 8, "u8", B, "KINDS"),
            Field("width", 9, "u8", B, "access width in bits: 8, 16, 32 (ports), 8-64 (MMIO)"),
            Field(
                "flags",
                10,
                "u8",
                B,
                "REQ_FLAGS: POSTED = a posted write (the thread did not wait; served like any other)",
            ),
            Field("pc", 12, "u32", B, "pc of the request instruction (for logs)"),
            Field("addr", 16, "u64", B, "port number or guest-physical address"),
            Field("value", 24, "u64", B, "value to write (writes), else 0"),
        ),
    )
)

RESPONSE = _check(
    Struct(
        "response",
        16,
        (
            Field("seq", 0, "u32", G, "the request's seq"),
            Field("status", 4, "u32", G, "STATUS"),
            Field("value", 8, "u64", G, "the value read (reads), else 0"),
        ),
    )
)

EVENT = _check(
    Struct(
        "event",
        16,
        (
            Field("seq", 0, "u32", G, "event number (0, 1, 2, ...)"),
            Field("source", 4, "u32", G, "SOURCES"),
            Field("data", 8, "u64", G, "source-specific (COM1: the byte received)"),
        ),
    )
)

# The request kinds the guest serves: PXI's own codes (pxi/machine.py), one source.
KINDS = {k.name: int(k) for k in RequestKind if k != RequestKind.WAIT_EVENT}
STATES = {
    "BOOT": 0,  # bridge: VRAM initialised, waiting for a program
    "START": 1,  # guest: program and prog_* fields written, please run it
    "RUNNING": 2,  # bridge: program accepted, executing
    "HALTED": 3,  # bridge: every thread halted
    "FAULT": 4,  # bridge: a thread faulted (fault, fault_thread, fault_pc)
    "ERROR": 5,  # bridge: program refused (error)
}
STATUS = {"OK": 0, "DENY": 1}
# Request flags.  The guest serves a posted write exactly like the others (same checks,
# a response in its slot); only the bridge acts on the flag: the response gives the GPU
# thread its posting credit back (docs/pxi.md, "Posted writes").  The byte was zero in
# every earlier request, so the layout version is unchanged.
REQ_FLAGS = {"POSTED": 1}
# IRQ: data = the function's index in the boot info.  DMAR: a device DMA the IOMMU blocked
# (microkernel/iommu.c); data = the fault record's upper half: requester bdf in bits 15:0,
# VT-d fault reason in bits 39:32, bit 62 set for a read (the device read memory).
SOURCES = {"COM1_RX": 1, "IRQ": 2, "DMAR": 3}
# A WAIT_EVENT selector: bits 0-7 the source (0: any), bits 8-31 a timeout in ms (0: none).
# The bridge answers a wait that timed out with WAIT_TIMEOUT (no event has that data).
# The GPU has no clock of its own: this is how a driver bounds a wait for an interrupt
# that may never come (docs/drivers.md, "Interrupts or polling").
WAIT_TIMEOUT_SHIFT = 8
WAIT_TIMEOUT_MAX_MS = (1 << 24) - 1
WAIT_TIMEOUT = 0xFFFFFFFF
ERRORS = {
    "NONE": 0,
    "BAD_SIZE": 1,  # prog_width/prog_pixels inconsistent or larger than prog_max
    "BAD_MEMORY": 2,  # prog_memory 0, not a multiple of 4, or above heap_size
    "BAD_THREADS": 3,  # prog_threads 0 or above the bridge's limit
    "BAD_ENTRY": 4,  # prog_entry outside the program
}

# The boot info: what a pixel driver must know and cannot read itself (it sees only its
# data memory and its image, never config space).  The kernel writes it at heap offset 0
# (data address 0) before it sets state START; the program may overwrite it once read.
BOOT = _check(
    Struct(
        "boot",
        0x40,
        (
            # magic and version as one u64: the kernel stores both at once
            Field("magic", 0x00, "u64", G, "`PXBI` (0x49425850) | layout version << 32"),
            Field("nfunc", 0x08, "u32", G, "functions listed below (at most MAX_FUNCS)"),
            Field("heap_phys", 0x10, "u64", G, "bus address of the heap (data address 0), for DMA"),
        ),
    )
)
FUNC = _check(
    Struct(
        "func",
        0x60,
        (
            Field("bdf", 0x00, "u32", G, "bus << 8 | device << 3 | function"),
            Field("id", 0x04, "u32", G, "vendor ID | device ID << 16 (config 0)"),
            Field("classcode", 0x08, "u32", G, "class << 24 | subclass << 16 | prog-if << 8 | rev"),
            Field(
                "irq",
                0x0C,
                "u32",
                G,
                "IDT vector of its MSI-X entry 0 (DEV_VECTOR + index), 0 if none is routed",
            ),
            Field("bar", 0x10, "u64", G, "BARs 0-5: bus address (0: none or unplaced)", 6),
            Field(
                "size", 0x40, "u32", G, "BARs 0-5: size in bytes (a 64-bit BAR: in the low one)", 6
            ),
        ),
    )
)
BOOT_FUNCS_OFF = BOOT.size  # the function table follows the boot header
BOOT_INFO_SIZE = BOOT.size + MAX_FUNCS * FUNC.size

PAYLOAD = _check(
    Struct(
        "payload",
        32,
        (
            Field("magic", 0x00, "u32", "build", "`PXIP` (0x50495850)"),
            Field("version", 0x04, "u32", "build", "payload version (1)"),
            Field("width", 0x08, "u32", "build", "image width (pixels)"),
            Field("pixels", 0x0C, "u32", "build", "pixel count (a multiple of width)"),
            Field("entry", 0x10, "u32", "build", "entry pc"),
            Field("threads", 0x14, "u32", "build", "threads"),
            Field("memory", 0x18, "u32", "build", "data memory bytes"),
        ),
    )
)


MIN_VRAM = 1 << 16


@dataclass(frozen=True)
class Regions:
    """Where the rings, program and heap lie in a VRAM of a given size."""

    vram_size: int

    def __post_init__(self) -> None:
        assert self.vram_size >= MIN_VRAM and self.vram_size & (self.vram_size - 1) == 0

    @property
    def req_off(self) -> int:
        return HEADER_SIZE

    @property
    def rsp_off(self) -> int:
        return self.req_off + RING_ENTRIES * REQUEST.size

    @property
    def evt_off(self) -> int:
        return self.rsp_off + RING_ENTRIES * RESPONSE.size

    @property
    def prog_off(self) -> int:
        return _align(self.evt_off + RING_ENTRIES * EVENT.size, 0x1000)

    @property
    def heap_off(self) -> int:
        return self.vram_size // 2

    @property
    def prog_max(self) -> int:
        return self.heap_off - self.prog_off

    @property
    def heap_size(self) -> int:
        return self.vram_size - self.heap_off

    def header_values(self) -> dict[str, int]:
        return {
            "magic": MAGIC,
            "version": VERSION,
            "vram_size": self.vram_size,
            "state": STATES["BOOT"],
            "req_off": self.req_off,
            "rsp_off": self.rsp_off,
            "evt_off": self.evt_off,
            "ring_entries": RING_ENTRIES,
            "prog_off": self.prog_off,
            "prog_max": self.prog_max,
            "heap_off": self.heap_off,
            "heap_size": self.heap_size,
        }


def _align(n: int, a: int) -> int:
    return (n + a - 1) & -a


_FIXED = Regions(MIN_VRAM)  # ring and program offsets do not depend on the VRAM size


# ---------------------------------------------------------------- generators


def c_header() -> str:
    """vgpu_layout.h for the microkernel (generated at build time, never edited)."""
    out = [
        "// Generated from hil/vgpu/layout.py by the image builder. Do not edit.",
        "#pragma once",
        "",
        f"#define VG_VERSION {VERSION}",
        f"#define VG_MAGIC 0x{MAGIC:08X}",
        f"#define VG_PAYLOAD_MAGIC 0x{PAYLOAD_MAGIC:08X}",
        f"#define VG_RING_ENTRIES {RING_ENTRIES}",
        f"#define VG_MSIX_VECTOR {MSIX_VECTOR}",
        f"#define VG_IRQ_VECTOR 0x{GUEST_IRQ_VECTOR:X}",
        f"#define VG_DEV_VECTOR 0x{DEV_VECTOR:X}",
        f"#define VG_MAX_FUNCS {MAX_FUNCS}",
        f"#define VG_BOOT_MAGIC 0x{BOOT_MAGIC:08X}",
        f"#define VG_PAYLOAD_VERSION {PAYLOAD_VERSION}",
        f"#define VG_DMA_BASE 0x{DMA_BASE:X}UL",
        f"#define VG_DMA_SIZE 0x{DMA_SIZE:X}UL",
        # Fixed for a layout version: the guest uses these constants and never reads
        # the (bridge-written, therefore untrusted) offset fields of the header.
        f"#define VG_MIN_VRAM 0x{MIN_VRAM:X}UL",
        *(
            f"#define VG_{k.upper()} 0x{getattr(_FIXED, k):X}"
            for k in ("req_off", "rsp_off", "evt_off", "prog_off")
        ),
        "",
    ]
    for table, prefix in (
        (STATES, "VG_STATE_"),
        (KINDS, "VG_KIND_"),
        (STATUS, "VG_STATUS_"),
        (REQ_FLAGS, "VG_REQ_"),
        (SOURCES, "VG_SRC_"),
    ):
        out += [f"#define {prefix}{k} {v}" for k, v in table.items()] + [""]
    for s in (HEADER, REQUEST, RESPONSE, EVENT, PAYLOAD, FUNC, BOOT):
        out.append(f"struct vg_{s.name} {{")
        at = 0
        for f in s.fields:
            if f.offset > at:
                out.append(f"    u8 _pad{at:x}[{f.offset - at}];")
            out.append(f"    {f.ctype} {f.name}{f'[{f.count}]' if f.count > 1 else ''};")
            at = f.offset + f.size
        if s is BOOT:  # the function table follows the boot header in one struct
            out.append(f"    u8 _pad{at:x}[{s.size - at}];")
            out.append(f"    struct vg_func func[{MAX_FUNCS}];")
            at = s.size
        if s.size > at and s is not HEADER:
            out.append(f"    u8 _pad{at:x}[{s.size - at}];")
        out.append("} __attribute__((packed));")
        if s is not HEADER:
            size = BOOT_INFO_SIZE if s is BOOT else s.size
            out.append(f'_Static_assert(sizeof(struct vg_{s.name}) == {size}, "{s.name}");')
        out.append("")
    return "\n".join(out)


def doc_tables() -> str:
    """The field tables of docs/vgpu.md."""
    out = []
    for s in (HEADER, REQUEST, RESPONSE, EVENT, PAYLOAD, BOOT, FUNC):
        out += [
            f"**{s.name}** ({s.size} bytes)",
            "",
            "| offset | field | type | written by | meaning |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| 0x{f.offset:02x} | `{f.name}` | {f.ctype}{f'[{f.count}]' if f.count > 1 else ''}"
            f" | {f.writer} | {f.doc} |"
            for f in s.fields
        ]
        out.append("")
    for name, table in (
        ("STATES", STATES),
        ("KINDS", KINDS),
        ("STATUS", STATUS),
        ("REQ_FLAGS", REQ_FLAGS),
        ("SOURCES", SOURCES),
        ("ERRORS", ERRORS),
    ):
        out.append(f"**{name}**: " + ", ".join(f"`{k}` = {v}" for k, v in table.items()))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def pxs_constants() -> str:
    """pxi/programs/lib/vgpu_layout.pxs: what a pixel program may know of this layout
    (the boot info, event sources, the DMA window), generated like the C header."""
    out = [
        "; Generated from hil/vgpu/layout.py (layout.pxs_constants). Do not edit;",
        "; tests/test_vgpu_unit.py checks it is current.",
        f"VG_VERSION = {VERSION}",
        f"VG_BOOT_MAGIC = 0x{BOOT_MAGIC:08x}",
        f"VG_MAX_FUNCS = {MAX_FUNCS}",
        f"VG_DEV_VECTOR = 0x{DEV_VECTOR:x}",
        f"VG_DMA_BASE = 0x{DMA_BASE:x}",
        f"VG_DMA_SIZE = 0x{DMA_SIZE:x}",
        f"VG_BOOT_FUNCS = 0x{BOOT_FUNCS_OFF:x}  ; data address of function 0",
        f"VG_BOOT_INFO_SIZE = 0x{BOOT_INFO_SIZE:x}",
        f"VG_FUNC_BYTES = 0x{FUNC.size:x}  ; one function's entry",
        "; field offsets: vg_boot.* from data address 0, vg_func.* from a function's entry",
    ]
    for st in (BOOT, FUNC):
        out += [f"vg_{st.name}.{f.name} = 0x{f.offset:x}" for f in st.fields]
    out += [f"VG_SRC_{k} = {v}" for k, v in SOURCES.items()]
    out += [
        f"VG_WAIT_TIMEOUT_SHIFT = {WAIT_TIMEOUT_SHIFT}  ; selector = source | ms << shift",
        f"VG_WAIT_TIMEOUT = 0x{WAIT_TIMEOUT:x}  ; what a wait that timed out returns",
    ]
    return "\n".join(out) + "\n"
