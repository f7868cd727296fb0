"""``hil doctor``'s passthrough section: IOMMU groups and what could be passed through.

Read-only (it never loads a module or writes a file), so it runs on any host.  The
"why not" of each device is the same Problem preflight raises, so the two agree.
"""

from __future__ import annotations

from pathlib import Path

from .bdf import Bdf
from .checks import Preflight
from .host import PciHost
from .state import DEFAULT_REGISTRY, Processes, Registry, StateError
from .sysfs import Sysfs


def _never_run(argv: object) -> tuple[int, str]:
    raise AssertionError("doctor_report must not run commands")


def doctor_report(
    sysfs: Sysfs | None = None,
    *,
    registry: str | Path = DEFAULT_REGISTRY,
    allow_noiommu: bool = False,
    procs: Processes | None = None,
) -> list[str]:
    """Lines for ``hil doctor``: vfio and IOMMU state, then each IOMMU group's devices.

    A device some hil holds (a state file in ``registry``) says so, and one left behind
    by a hil that died says how to give it back.
    """
    sysfs = sysfs or Sysfs("/")
    held = _holders(Registry(registry), procs or Processes())
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
        lines += [_line(pre, host, b, global_why, held) for b in by_group[group]]
    if None in by_group:
        lines.append("in no IOMMU group:")
        lines += [_line(pre, host, b, global_why, held) for b in by_group[None]]
    if not functions:
        lines.append("no PCI devices")
    return lines


def _holders(registry: Registry, procs: Processes) -> dict[Bdf, str]:
    out = {}
    try:
        paths = registry.entries()
    except StateError:
        return {}
    for path in paths:
        bdf = Bdf.parse(path.stem)
        if bdf is None:
            continue
        try:
            record = registry.read(bdf)
        except StateError:
            out[bdf] = f"its state file {path} is unreadable"
            continue
        if record is None:
            continue
        if procs.alive(record.owner):
            out[bdf] = (
                f"held by hil pid {record.owner.pid} ({record.run_dir or 'no run directory'})"
            )
        else:
            out[bdf] = (
                f"left behind by hil pid {record.owner.pid}, which died:"
                " `hil vfio restore` gives it back"
            )
    return out


def _line(
    pre: Preflight, host: PciHost, bdf: Bdf, global_why: list[str], held: dict[Bdf, str]
) -> str:
    try:
        f = host.function(bdf)
        why = global_why + [p.reason for p in pre.device_problems(bdf, set())]
    except OSError as e:  # a device that went away while we looked
        return f"  {bdf}  unreadable ({e.strerror})"
    verdict = "bindable" if not why else "not bindable: " + "; ".join(why)
    if bdf in held:
        verdict = held[bdf]
    return f"  {bdf}  {f.ids}  class {f.class_text}  driver {f.driver or '-'}  {verdict}"
