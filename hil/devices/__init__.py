"""Devices a machine can carry; each kind is one file here (hil/devices/base.py says what
a kind owns).  A device is written the same way in a profile and in a scenario:

    devices:
      - nvme: {size: 64M, fill: lba}       # a disk created for this run
      - nvme: {file: disks/fs.img}         # copy-on-write over a file, never modified
      - nic: {model: e1000}                # user networking, traffic kept as a pcap
      - usb: {keyboard: true, storage: 8M} # qemu-xhci + usb-kbd + usb-storage
      - display: {model: std}              # a display-class PCI function
      - share: {path: /, tag: host}        # a host directory over virtio-9p, read-only

``parse`` turns YAML into frozen specs (validated, with file:line errors); ``attach``
turns planned specs into QEMU arguments plus the per-run files they need (created in the
run directory, so parallel runs never share one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..yamlsrc import Fields, LDict, Problems
from . import display, nic, nvme, passthrough, share, usb, vgpu  # noqa: F401  (each registers its kind)
from .base import AfterContext, AttachContext, DeviceKind, Finding, ParseContext, PciId
from .display import Display
from .nic import Nic
from .nvme import Nvme
from .registry import DEVICES
from .usb import Usb
from .vgpu import GpuOptions, Vgpu

__all__ = [
    "DEVICES",
    "AfterContext",
    "AttachContext",
    "DeviceKind",
    "Display",
    "Finding",
    "GpuOptions",
    "Nic",
    "Nvme",
    "ParseContext",
    "PciId",
    "Usb",
    "Vgpu",
    "attach",
    "instances",
    "kind_of",
    "parse",
]


def kind_of(spec) -> DeviceKind:
    return DEVICES[spec.kind]


def instances(devices) -> dict[str, object]:
    """Instance name (nvme0, nic1, ... in attach order, as artifacts are named) -> spec."""
    out, counters = {}, {}
    for spec in devices:
        n = counters.get(spec.kind, 0)
        counters[spec.kind] = n + 1
        out[f"{spec.kind}{n}"] = spec
    return out


def listable() -> list[str]:
    """Kinds written as items of a ``devices:`` list (not those owning a section)."""
    return [k.name for k in DEVICES.kinds() if k.section is None]


def parse(problems: Problems, node, where: str, base_dir: Path, source: str = "scenario"):
    """A ``devices:`` list -> specs. ``base_dir`` resolves relative ``file:`` paths."""
    if node is None:
        return []
    if not isinstance(node, list):
        problems.add(
            getattr(node, "line", None),
            where,
            "expected a list of devices, e.g. '- nvme: {size: 64M}'.",
        )
        return []
    ctx = ParseContext(problems, base_dir, source)
    kinds = listable()
    out = []
    for i, item in enumerate(node):
        line = node.lines[i] if hasattr(node, "lines") else None
        here = f"{where}[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            problems.add(
                line,
                here,
                "each device is a one-key mapping naming its kind "
                f"({', '.join(kinds)}), e.g. '- nic: {{model: e1000}}'.",
            )
            continue
        ((name, body),) = item.items()
        kind = DEVICES.get(name)
        if kind is None or kind.section is not None:
            problems.add(line, here, DEVICES.unknown(name, kinds))
            continue
        if body is None:
            body = LDict()
            body.line, body.lines = line, {}
        f = Fields(problems, body, f"{here}.{name}", (*kind.keys, "behind_root_port"), line)
        if not f.ok:
            continue
        brp = f.get("behind_root_port", bool, False)
        spec = kind.parse(f, ctx)
        f.done()
        if spec is not None and f.ok:
            out.append(dataclasses.replace(spec, behind_root_port=bool(brp)))
    return out


@dataclass
class Attachment:
    args: list[str]
    files: dict[str, Path]  # artifact name -> path in the run dir (disks, pcaps)


def attach(devices, run_dir: Path, helpers: dict[int, object] | None = None) -> Attachment:
    """QEMU arguments for planned ``devices``; per-run files are created in ``run_dir``.
    ``helpers`` maps a device's index to its started helper process."""
    ctx = AttachContext(run_dir)
    counters: dict[str, int] = {}
    for port, spec in enumerate(devices):
        n = counters.get(spec.kind, 0)
        counters[spec.kind] = n + 1
        ctx.name, ctx.bus = f"{spec.kind}{n}", ""
        ctx.helper = (helpers or {}).get(port)
        if spec.behind_root_port:
            rp = f"rp{port}"
            ctx.add("-device", f"pcie-root-port,id={rp},chassis={port + 1},slot={port + 1}")
            ctx.bus = f",bus={rp}"
        kind_of(spec).attach(spec, ctx)
    return Attachment(ctx.args, ctx.files)
