"""usb: QEMU's xHCI controller (1b36:000d) with a keyboard and/or a storage stick.

- usb: {keyboard: true, storage: 8M, fill: {random: 7}}

The keyboard is QEMU device ``<name>-kbd`` (the ``key`` step types on it), the stick
``<name>-stick`` (QMP ``device_del`` unplugs it); the stick's disk is a fresh image made
per run with the NVMe disk's fill options (artifact ``<name>.disk``, for the ``disk``
check), 512-byte blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .. import qemuopt
from . import disk
from .base import AfterContext, AttachContext, DeviceKind, Finding, PciId
from .registry import DEVICES

ID = PciId(0x1B36, 0x000D, 0x0C0330)


@dataclass(frozen=True)
class Usb:
    keyboard: bool = True
    storage: int | None = None  # bytes of a usb-storage disk, None for none
    fill: str = "zero"  # the stick's content (devices/disk.py FILLS)
    lba_size: int = 512  # usb-storage's SCSI block size (the disk check reads it)
    behind_root_port: bool = False
    kind = "usb"


@DEVICES.register
class UsbKind(DeviceKind):
    name = "usb"
    keys = ("keyboard", "storage", "fill")
    spec = Usb
    metrics = {
        "usb.read_mbps": "MB/s (10^6 bytes) of the pixel xHCI driver's timed stick reads: the "
        "bytes its 'msc bench done reads N bytes B' line names over the host-clock time from "
        "the 'msc bench start' line to that one (pxi/programs/usb/usbtest.pxs)",
    }

    def parse(self, f, ctx):
        kbd = f.get("keyboard", bool, True)
        storage, fill = None, "zero"
        if f.has("storage"):
            storage, fill = disk.parse_fresh(f, "storage", "fill", "8M")
            if storage is None:
                return None
        elif f.has("fill"):
            f.error("fill", "a fill is the stick's content: give 'storage: SIZE' too.")
            return None
        return Usb(keyboard=bool(kbd), storage=storage, fill=fill)

    def pci_ids(self, spec):
        return [ID]

    def attach(self, spec, ctx: AttachContext):
        ctx.add("-device", qemuopt.opts("qemu-xhci", id=ctx.name) + ctx.bus)
        if spec.keyboard:
            ctx.add("-device", qemuopt.opts("usb-kbd", id=f"{ctx.name}-kbd", bus=f"{ctx.name}.0"))
        if spec.storage:
            path = ctx.file("disk", f"{ctx.name}-storage.img")
            disk.fresh(path, spec.storage, spec.fill)
            drive = f"{ctx.name}disk"
            ctx.add("-drive", qemuopt.props(file=path, id=drive, format="raw", **{"if": "none"}))
            ctx.add(
                "-device",
                qemuopt.opts(
                    "usb-storage", id=f"{ctx.name}-stick", bus=f"{ctx.name}.0", drive=drive
                ),
            )

    def after(self, spec, ctx: AfterContext) -> list[Finding]:
        # The lines come from the guest: their numbers are bounded before use.
        start = done = None
        for ln in ctx.lines:
            if ln.text == "msc bench start":
                start, done = ln.t, None
            elif start is not None and (m := _BENCH_DONE.match(ln.text)):
                done = (ln.t, int(m.group(2), 16))
        if start is not None and done is not None and done[0] > start and 0 < done[1] < 1 << 32:
            ctx.metrics["usb.read_mbps"] = round(done[1] / (done[0] - start) / 1e6, 4)
        return []


_BENCH_DONE = re.compile(r"^msc bench done reads ([0-9a-f]{8}) bytes ([0-9a-f]{8})$")
