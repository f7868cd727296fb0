"""``hil doctor``'s passthrough section: IOMMU groups and what could be passed through.

Read-only (it never loads a module or writes a file), so it runs on any host.  The
"why not" of each device is the same Problem preflight raises, so the two agree.
"""

from __future__ import annotations

from .bdf import Bdf
from .checks import Preflight
from .host import PciHost
from .sysfs import Sysfs


def _never_run(argv: object) -> tuple[int, str]:
    raise AssertionError("doctor_report must not run commands")


def doctor_report(sysfs: Sysfs | None = None, *, allow_noiommu: bool = False) -> list[str]:
    """Lines for ``hil doctor``: vfio and IOMMU state, then each IOMMU group's devices."""
    sysfs = sysfs or Sysfs("/")
    host = PciHost(sysfs)
    pre = Preflight(sysfs, allow_noiommu=allow_noiommu, runner=_never_run)
    iommus = host.iommus()
    lines = [
        f"IOMMU: {'active (' + ', '.join(iommus) + ')' if iommus else 'none active'}",
        f"vfio-pci: {'loaded' if host.vfio_loaded() else 'not loaded (modprobe vfio-pci)'}",
    ]
    global_why = [p.reason for p in pre.iommu_problems()]
    functions = host.functions()
    by_group: dict[int | None, list[Bdf]] = {}
    for bdf in functions:
        by_group.setdefault(host.group(bdf), []).append(bdf)
    for group in sorted(g for g in by_group if g is not None):
        lines.append(f"IOMMU group {group}:")
        lines += [_line(pre, host, b, global_why) for b in by_group[group]]
    if None in by_group:
        lines.append("in no IOMMU group:")
        lines += [_line(pre, host, b, global_why) for b in by_group[None]]
    if not functions:
        lines.append("no PCI devices")
    return lines


def _line(pre: Preflight, host: PciHost, bdf: Bdf, global_why: list[str]) -> str:
    try:
        f = host.function(bdf)
        why = global_why + [p.reason for p in pre.device_problems(bdf, set())]
    except OSError as e:  # a device that went away while we looked
        return f"  {bdf}  unreadable ({e.strerror})"
    verdict = "bindable" if not why else "not bindable: " + "; ".join(why)
    return f"  {bdf}  {f.ids}  class {f.class_text}  driver {f.driver or '-'}  {verdict}"
