"""passthrough (live): every passed-through function is in the kernel's PCI listing with
the IDs, class and BARs (kind, 64-bit, prefetchable, size) the host's sysfs reports.

    - check: passthrough

``check: pci`` compares the listing with QEMU's view of the guest; this one compares it
with the host kernel's view of the real device, read at the moment of the check
(``/sys/bus/pci/devices/<bdf>/{vendor,device,class,resource}``): what the guest finds
must be the silicon, not a model of it.  Addresses differ by design (the guest has its
own bus and BAR addresses), so a host function matches the listed guest function with
the same IDs, class and BAR list.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import pcicheck
from .base import CHECKS, CheckKind
from .pci import await_listing


@dataclass(frozen=True)
class HostFunction:
    """One passed-through function as the host's sysfs shows it."""

    bdf: str
    vendor: int
    device: int
    class_code: int  # 24 bits
    bars: dict  # index -> pcicheck.Bar (address None: the guest's differs)


def host_function(bdf) -> HostFunction:
    from ..vfio import PciHost, Sysfs

    h = PciHost(Sysfs("/"))
    fn = h.function(bdf)
    bars = {
        b.index: pcicheck.Bar(
            "io" if b.is_io else ("m64" if b.is_64bit else "m32"), b.prefetchable, None, b.size
        )
        for b in h.bars(bdf)
        if b.index < 6  # the ROM: the kernel lists no ROMs
    }
    return HostFunction(str(bdf), fn.vendor or 0, fn.device or 0, fn.class_code or 0, bars)


def _bars(bars: dict) -> dict:
    return {n: (b.kind, b.prefetch, b.size) for n, b in bars.items()}


def match(kernel: dict, hosts: list[HostFunction]) -> tuple[dict, list[str]]:
    """host bdf -> guest bdf for each host function found in the kernel's listing, and a
    sentence for each one that is not (naming the closest guest function's differences)."""
    found, problems, taken = {}, [], set()
    for h in hosts:
        same_id = [
            k
            for k in kernel.values()
            if k.bdf not in taken
            and (k.vendor, k.device, k.class_code) == (h.vendor, h.device, h.class_code >> 8)
        ]
        exact = [k for k in same_id if _bars(k.bars) == _bars(h.bars)]
        if exact:
            found[h.bdf] = exact[0].bdf
            taken.add(exact[0].bdf)
            continue
        what = f"host {h.bdf} ({h.vendor:04x}:{h.device:04x} class {h.class_code:06x})"
        if not same_id:
            problems.append(f"{what}: no function with these IDs and class in the kernel's listing")
            continue
        k = same_id[0]
        problems.append(
            f"{what}: guest {k.bdf} has BARs {_show(k.bars)}, the host's sysfs {_show(h.bars)}"
        )
    return found, problems


def _show(bars: dict) -> str:
    parts = [
        f"{n}={b.kind}{'p' if b.prefetch else ''}/{b.size:#x}" for n, b in sorted(bars.items())
    ]
    return "[" + " ".join(parts) + "]" if parts else "[none]"


@CHECKS.register
class PassthroughCheck(CheckKind):
    name = "passthrough"
    live = True

    def run_live(self, step, engine) -> str:
        await_listing(step, engine)
        hosts = [host_function(s.host) for s in _passthrough(engine.plan)]
        if not hosts:
            engine.fail(step, "no passthrough device in this run", "invalid", "check: passthrough")
        found, problems = match(pcicheck.parse_kernel(engine.console.lines), hosts)
        if problems:
            engine.fail(
                step,
                "the kernel's listing differs from the host's sysfs: " + "; ".join(problems),
                "pci-mismatch",
                "check: passthrough",
            )
        return "; ".join(
            f"host {h.bdf} is guest {found[h.bdf]}: {h.vendor:04x}:{h.device:04x} "
            f"class {h.class_code:06x} BARs {_show(h.bars)} as in sysfs"
            for h in hosts
        )


def _passthrough(plan) -> list:
    return [] if plan is None else [d for d in plan.devices if d.kind == "passthrough"]
