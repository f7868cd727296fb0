"""usb: QEMU's xHCI controller (1b36:000d) with a keyboard and/or a storage stick.

- usb: {keyboard: true, storage: 8M}
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import qemuopt
from . import disk
from .base import AttachContext, DeviceKind, PciId
from .registry import DEVICES

ID = PciId(0x1B36, 0x000D, 0x0C0330)


@dataclass(frozen=True)
class Usb:
    keyboard: bool = True
    storage: int | None = None  # bytes of a usb-storage disk, None for none
    behind_root_port: bool = False
    kind = "usb"


@DEVICES.register
class UsbKind(DeviceKind):
    name = "usb"
    keys = ("keyboard", "storage")
    spec = Usb

    def parse(self, f, ctx):
        kbd = f.get("keyboard", bool, True)
        storage = None
        if f.has("storage"):
            storage, _ = disk.parse_fresh(f, "storage", None, "8M")
            if storage is None:
                return None
        return Usb(keyboard=bool(kbd), storage=storage)

    def pci_ids(self, spec):
        return [ID]

    def attach(self, spec, ctx: AttachContext):
        ctx.add("-device", qemuopt.opts("qemu-xhci", id=ctx.name) + ctx.bus)
        if spec.keyboard:
            ctx.add("-device", qemuopt.opts("usb-kbd", bus=f"{ctx.name}.0"))
        if spec.storage:
            path = ctx.file("disk", f"{ctx.name}-storage.img")
            disk.fresh(path, spec.storage, "zero")
            drive = f"{ctx.name}disk"
            ctx.add("-drive", qemuopt.props(file=path, id=drive, format="raw", **{"if": "none"}))
            ctx.add("-device", qemuopt.opts("usb-storage", bus=f"{ctx.name}.0", drive=drive))
