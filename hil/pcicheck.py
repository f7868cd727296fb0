"""The `check: pci` step: the kernel's PCI listing must equal what QEMU says it built.

Both sides are turned into the same shape -- {bdf: Function} -- and compared field by
field, so a mismatch names the function and what differs.  QEMU's side comes from QMP
``query-pci`` (walking through bridges); the kernel's from its ``pci`` console lines
(docs/console.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(
    r"^pci ([0-9a-f]{2}):([0-9a-f]{2})\.([0-7]) ([0-9a-f]{4}):([0-9a-f]{4}) "
    r"([0-9a-f]{6})((?: bar\d=\w+:[0-9a-f]+/[0-9a-f]+)*)\s*$"
)
_BAR = re.compile(r"bar(\d)=(io|m32|m64)(p?):([0-9a-f]+)/([0-9a-f]+)")


@dataclass(frozen=True)
class Bar:
    kind: str  # io | m32 | m64
    prefetch: bool
    address: int | None  # None: not known/assigned
    size: int


@dataclass
class Function:
    bdf: str  # bb:dd.f
    vendor: int
    device: int
    class_code: int  # 16-bit: base class << 8 | subclass (QMP does not report prog-if)
    bars: dict[int, Bar] = field(default_factory=dict)


def parse_kernel(lines) -> dict[str, Function]:
    """Functions from the kernel's `pci` lines (objects with .text, or strings)."""
    out = {}
    for ln in lines:
        text = getattr(ln, "text", ln)
        m = _LINE.match(text)
        if not m:
            continue
        bdf = f"{m[1]}:{m[2]}.{m[3]}"
        fn = Function(bdf, int(m[4], 16), int(m[5], 16), int(m[6], 16) >> 8)
        for b in _BAR.finditer(m[7]):
            fn.bars[int(b[1])] = Bar(b[2], b[3] == "p", int(b[4], 16), int(b[5], 16))
        out[bdf] = fn
    return out


def parse_qmp(query_pci: list[dict]) -> dict[str, Function]:
    out: dict[str, Function] = {}

    def walk(bus_number: int, devices: list[dict]) -> None:
        for d in devices:
            bdf = f"{bus_number:02x}:{d['slot']:02x}.{d['function']:x}"
            fn = Function(bdf, d["id"]["vendor"], d["id"]["device"], d["class_info"]["class"])
            for r in d.get("regions", []):
                if r["bar"] > 5:
                    continue  # the expansion ROM (slot 6): the kernel does not list ROMs
                kind = "io" if r["type"] == "io" else ("m64" if r.get("mem_type_64") else "m32")
                addr = r.get("address")
                fn.bars[r["bar"]] = Bar(
                    kind,
                    bool(r.get("prefetch")),
                    None if addr in (None, -1, 2**64 - 1) else addr,
                    r["size"],
                )
            out[bdf] = fn
            bridge = d.get("pci_bridge")
            if bridge:
                walk(bridge["bus"]["secondary"], bridge.get("devices", []))

    for bus in query_pci:
        walk(bus["bus"], bus["devices"])
    return out


def compare(kernel: dict[str, Function], qemu: dict[str, Function]) -> list[str]:
    """Differences as sentences; empty when the listings agree."""
    problems = []
    for bdf in sorted(set(qemu) - set(kernel)):
        q = qemu[bdf]
        problems.append(
            f"{bdf} ({q.vendor:04x}:{q.device:04x}) exists in QEMU but the kernel did not list it"
        )
    for bdf in sorted(set(kernel) - set(qemu)):
        problems.append(f"{bdf} was listed by the kernel but QEMU has no such function")
    for bdf in sorted(set(kernel) & set(qemu)):
        k, q = kernel[bdf], qemu[bdf]
        if (k.vendor, k.device) != (q.vendor, q.device):
            problems.append(
                f"{bdf}: kernel says {k.vendor:04x}:{k.device:04x}, QEMU "
                f"{q.vendor:04x}:{q.device:04x}"
            )
        if k.class_code != q.class_code:
            problems.append(f"{bdf}: kernel says class {k.class_code:04x}, QEMU {q.class_code:04x}")
        for n in sorted(set(k.bars) | set(q.bars)):
            kb, qb = k.bars.get(n), q.bars.get(n)
            if kb is None or qb is None:
                who = "kernel" if kb is None else "QEMU"
                problems.append(f"{bdf} BAR{n}: missing on the {who} side (other side: {kb or qb})")
                continue
            if (kb.kind, kb.prefetch, kb.size) != (qb.kind, qb.prefetch, qb.size):
                problems.append(f"{bdf} BAR{n}: kernel {_bar(kb)}, QEMU {_bar(qb)}")
            elif qb.address is not None and kb.address != qb.address:
                problems.append(
                    f"{bdf} BAR{n}: kernel address {kb.address:#x}, QEMU {qb.address:#x}"
                )
    return problems


def _bar(b: Bar) -> str:
    return f"{b.kind}{'p' if b.prefetch else ''} size {b.size:#x}"


def missing(kernel: dict[str, Function], expected: list) -> list[str]:
    """The attached devices (PciIds: vendor, device, 24-bit class) the kernel did not list,
    counted: two NVMe attached need two NVMe functions listed."""
    have: dict[tuple[int, int, int], int] = {}
    for f in kernel.values():
        key = (f.vendor, f.device, f.class_code)
        have[key] = have.get(key, 0) + 1
    problems = []
    for pid in expected:
        key = (pid.vendor, pid.device, pid.class_code >> 8)
        if have.get(key, 0):
            have[key] -= 1
        else:
            problems.append(f"an attached device {pid} was not listed by the kernel")
    return problems
