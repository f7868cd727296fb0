"""nvme: QEMU's NVMe controller (1b36:0010) with a disk made for the run.

- nvme: {size: 64M, fill: lba, serial: PXNVME0}   # a fresh disk
- nvme: {file: disks/fs.img}                       # copy-on-write over a file
- nvme: {size: 16M, namespaces: 2}                 # namespaces 1 and 2, a disk each
- nvme: {size: 1M, cmb_mb: 4096}                   # a 4 GiB controller memory buffer

With ``namespaces`` > 1 the controller gets its namespaces as ``nvme-ns`` devices on its
own bus (QEMU 7.2: ``-device nvme,id=nvme0 -device nvme-ns,drive=..,nsid=N,bus=nvme0``),
each with a fresh disk of ``size`` and ``fill``: artifact ``nvme0.disk`` for namespace 1
(as with one), ``nvme0n2.disk``, ... for the others (the disk check's ``device``).

``cmb_mb`` gives the controller a memory buffer (QEMU 7.2: ``cmb_size_mb``, hw/nvme/ctrl.c
nvme_init_cmb): BAR2, 64-bit and prefetchable, of that many MiB. Its point is the BAR,
not the buffer: one of 2048 MiB or more cannot fit the 32-bit PCI window, so the firmware
places it above 4 GiB, and one of 4096 or more has a size only the BAR's upper half
holds. QEMU allocates the buffer with g_malloc0, so the host's pages are only taken
where the guest writes.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import nvmeperf, qemuopt
from ..errors import UserError
from ..pattern import Pattern
from ..steps.patterns import parse_pattern
from ..yamlsrc import check_input_file
from . import disk
from .base import AfterContext, AttachContext, DeviceKind, Finding, PciId
from .registry import DEVICES

ID = PciId(0x1B36, 0x0010, 0x010802)
MAX_FILE = 1 << 40  # a disk file of 1 TiB is attached; a larger one is a mistake
SERIAL = re.compile(r"[A-Za-z0-9 ._:-]{1,20}")  # NVMe's SN field: 20 ASCII characters
MAX_NAMESPACES = 8  # the pixel driver identifies namespaces 1..8
# QEMU 7.2 aborts on a BAR size that is no power of two (an assertion in
# pci_register_bar); 64 GiB bounds the host address space the buffer reserves (its pages
# are only taken where the guest writes; 2 TiB fails QEMU's g_malloc0)
MAX_CMB_MB = 1 << 16


@dataclass(frozen=True)
class Nvme:
    size: int | None = None  # bytes of a fresh disk
    fill: str = "zero"  # zero | lba | 0xNN
    file: Path | None = None  # or a copy-on-write overlay over this file
    serial: str = ""
    errors_allowed: tuple[Pattern, ...] = ()  # QEMU trace lines that do not fail the run
    lba_size: int = 512  # the namespace's logical block size: 512 or 4096
    namespaces: int = 1  # > 1: nvme-ns devices, a fresh disk each
    cmb_mb: int = 0  # > 0: a controller memory buffer of this many MiB (BAR2, 64-bit)
    behind_root_port: bool = False
    kind = "nvme"


def disk_name(instance: str, nsid: int) -> str:
    """The artifact of namespace ``nsid``'s disk: nvme0.disk, nvme0n2.disk, ..."""
    return f"{instance}.disk" if nsid == 1 else f"{instance}n{nsid}.disk"


@DEVICES.register
class NvmeKind(DeviceKind):
    name = "nvme"
    keys = (
        "size",
        "fill",
        "file",
        "serial",
        "errors_allowed",
        "lba_size",
        "namespaces",
        "cmb_mb",
    )
    spec = Nvme
    TRACES = ("pci_nvme_err_", "pci_nvme_ub_")
    metrics = nvmeperf.catalogue()  # when a pixel driver ran bench phases (hil/nvmeperf.py)

    def parse(self, f, ctx):
        allowed = self._allowed(f, ctx)
        if allowed is None:
            return None
        lba = f.get("lba_size", int, 512, example="lba_size: 4096")
        if lba not in (512, 4096):
            f.error("lba_size", "must be 512 or 4096 (the LBA sizes QEMU's NVMe offers).")
            return None
        nns = f.get("namespaces", int, 1, example="namespaces: 2")
        if nns is None:
            return None
        if not 1 <= nns <= MAX_NAMESPACES:
            f.error(
                "namespaces",
                f"must be 1 to {MAX_NAMESPACES} (the namespaces the pixel driver identifies).",
            )
            return None
        cmb = self._cmb(f)
        if cmb is None:
            return None
        spec = self._disk(f, ctx)
        if spec is not None and spec.size and spec.size % lba:
            f.error("size", f"must be a whole number of {lba}-byte LBAs.")
            return None
        if spec is not None and nns > 1 and spec.file is not None:
            f.error(
                "namespaces",
                "several namespaces get a fresh disk each: give 'size'/'fill', not 'file'.",
            )
            return None
        if spec is None:
            return None
        return dataclasses.replace(
            spec, errors_allowed=allowed, lba_size=lba, namespaces=nns, cmb_mb=cmb
        )

    def _cmb(self, f) -> int | None:
        """cmb_mb: 0 (none) or a power of two of MiB up to MAX_CMB_MB; None: an error."""
        mb = f.get("cmb_mb", int, 0, example="cmb_mb: 4096")
        raw = f.node.get("cmb_mb", 0)
        if mb is None or isinstance(raw, bool) or not isinstance(raw, int):
            return None  # get() reported the type error (and gave the default)
        if mb and (mb < 0 or mb > MAX_CMB_MB or mb & (mb - 1)):
            f.error(
                "cmb_mb",
                f"{mb} cannot be the size of the controller memory buffer: give a power of "
                f"two of MiB from 1 to {MAX_CMB_MB} (it is a PCI BAR), e.g. 'cmb_mb: 4096', "
                "or leave the key out for none.",
            )
            return None
        return mb

    def _allowed(self, f, ctx) -> tuple | None:
        items = f.get(
            "errors_allowed", list, [], example="errors_allowed: [pci_nvme_err_invalid_lba_range]"
        )
        if items is None:
            return None
        pats = [
            parse_pattern(ctx.problems, p, f"{f.path('errors_allowed')}[{j}]", items.lines[j])
            for j, p in enumerate(items)
        ]
        return None if None in pats else tuple(pats)

    def _disk(self, f, ctx):
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
            path = Path(os.path.realpath(ctx.base_dir / file_raw))
            if (problem := check_input_file(path, "disk image", MAX_FILE)) is not None:
                f.error(
                    "file",
                    f"{problem} (Relative paths are relative to the YAML file.)",
                )
                return None
            return Nvme(file=path, serial=serial)
        size, fill = disk.parse_fresh(f, "size", "fill", "16M")
        return Nvme(size=size, fill=fill, serial=serial) if size else None

    def plan(self, spec, profile):
        if spec.file is not None:
            # a broken backing chain, or a file that is no disk, is the user's to fix
            if disk.image_format(spec.file) == "raw" and spec.file.stat().st_size % 512:
                raise UserError(
                    f"{spec.file}: a raw disk image is a whole number of 512-byte sectors; "
                    f"this file has {spec.file.stat().st_size} bytes. Is it a disk image?"
                )
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
        lba = spec.lba_size if spec.lba_size != 512 else None  # QEMU's default: say nothing
        if spec.namespaces == 1:
            ctx.add("-drive", qemuopt.props(file=path, id=ctx.name, format=fmt, **{"if": "none"}))
            ctx.add(
                "-device",
                qemuopt.opts(
                    "nvme",
                    serial=serial,
                    drive=ctx.name,
                    logical_block_size=lba,
                    physical_block_size=lba,
                    cmb_size_mb=spec.cmb_mb or None,
                )
                + ctx.bus,
            )
        else:
            self._namespaces(spec, ctx, path, serial, lba)
        for prefix in self.TRACES:
            ctx.once("-trace", f"{prefix}*")

    def _namespaces(self, spec, ctx: AttachContext, first: Path, serial: str, lba) -> None:
        """The controller without a drive, then one nvme-ns per namespace on its bus."""
        ctx.add(
            "-device",
            qemuopt.opts("nvme", id=ctx.name, serial=serial, cmb_size_mb=spec.cmb_mb or None)
            + ctx.bus,
        )
        for nsid in range(1, spec.namespaces + 1):
            if nsid == 1:
                path = first
            else:
                path = ctx.run_dir / f"{ctx.name}n{nsid}.img"
                ctx.files[disk_name(ctx.name, nsid)] = path
                disk.fresh(path, spec.size, spec.fill)
            drive = f"{ctx.name}n{nsid}"
            ctx.add("-drive", qemuopt.props(file=path, id=drive, format="raw", **{"if": "none"}))
            ctx.add(
                "-device",
                qemuopt.opts(
                    "nvme-ns",
                    drive=drive,
                    nsid=nsid,
                    bus=ctx.name,
                    logical_block_size=lba,
                    physical_block_size=lba,
                ),
            )

    def after(self, spec, ctx: AfterContext) -> list[Finding]:
        """QEMU's error trace: every line no nvme device of the plan allows."""
        if spec is not next(d for d in ctx.plan.devices if d.kind == "nvme"):
            return []  # the trace is the machine's: judged once, by the first nvme
        ctx.metrics.update(nvmeperf.metrics(ctx.run_dir))
        allowed = [p for d in ctx.plan.devices if d.kind == "nvme" for p in d.errors_allowed]
        try:
            with (ctx.run_dir / "qemu.log").open(errors="replace") as log:
                bad = [
                    ln.rstrip("\n")[:300]
                    for ln in log
                    if ln.startswith(self.TRACES) and not any(p.search(ln) for p in allowed)
                ]
        except OSError:
            return []
        if not bad:
            return []
        more = f" (and {len(bad) - 1} more in qemu.log)" if len(bad) > 1 else ""
        return [
            Finding(
                "nvme",
                "fail" if ctx.outcome == "pass" else "info",
                f"QEMU's NVMe model reported an error the scenario does not allow: {bad[0]!r}{more}",
                "device-error",
                evidence=bad[:20],
            )
        ]
