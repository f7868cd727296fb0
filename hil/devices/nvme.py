"""nvme: QEMU's NVMe controller (1b36:0010) with a disk made for the run.

- nvme: {size: 64M, fill: lba, serial: PXNVME0}   # a fresh disk
- nvme: {file: disks/fs.img}                       # copy-on-write over a file
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .. import qemuopt
from . import disk
from .base import AttachContext, DeviceKind, PciId
from .registry import DEVICES

ID = PciId(0x1B36, 0x0010, 0x010802)
SERIAL = re.compile(r"[A-Za-z0-9 ._:-]{1,20}")  # NVMe's SN field: 20 ASCII characters


@dataclass(frozen=True)
class Nvme:
    size: int | None = None  # bytes of a fresh disk
    fill: str = "zero"  # zero | lba | 0xNN
    file: Path | None = None  # or a copy-on-write overlay over this file
    serial: str = ""
    behind_root_port: bool = False
    kind = "nvme"


@DEVICES.register
class NvmeKind(DeviceKind):
    name = "nvme"
    keys = ("size", "fill", "file", "serial")
    spec = Nvme

    def parse(self, f, ctx):
        file_raw = f.get("file", str, None, example="file: disks/test.img")
        serial = f.get("serial", str, "", example="serial: PXNVME0")
        if serial and not SERIAL.fullmatch(serial):
            f.error(
                "serial",
                f"{serial[:40]!r} cannot be an NVMe serial number: 1 to 20 letters, digits, "
                "spaces or '._:-' (the controller's 20-byte SN field).",
            )
            return None
        if file_raw is not None:
            if f.has("size") or f.has("fill"):
                f.error(
                    "file",
                    "give either 'file' (an existing disk) or 'size'/'fill' (a fresh disk), "
                    "not both.",
                )
                return None
            path = (ctx.base_dir / file_raw).resolve()
            what = "is not a regular file" if path.exists() else "does not exist"
            if not path.is_file():
                f.error(
                    "file",
                    f"{path} {what}. Fix the path (relative paths are relative to the YAML file).",
                )
                return None
            return Nvme(file=path, serial=serial)
        size, fill = disk.parse_fresh(f, "size", "fill", "16M")
        return Nvme(size=size, fill=fill, serial=serial) if size else None

    def plan(self, spec, profile):
        if spec.file is not None:
            disk.image_format(spec.file)  # a broken backing chain is the user's to fix
        return spec

    def pci_ids(self, spec):
        return [ID]

    def attach(self, spec, ctx: AttachContext):
        if spec.file is None:
            path = ctx.file("disk", f"{ctx.name}.img")
            disk.fresh(path, spec.size, spec.fill)
            fmt = "raw"
        else:
            path = disk.overlay(spec.file, ctx.file("disk", f"{ctx.name}.qcow2"))
            fmt = "qcow2"
        serial = spec.serial or f"PXNVME{ctx.name.removeprefix('nvme')}"
        ctx.add("-drive", qemuopt.props(file=path, id=ctx.name, format=fmt, **{"if": "none"}))
        ctx.add("-device", qemuopt.opts("nvme", serial=serial, drive=ctx.name) + ctx.bus)
