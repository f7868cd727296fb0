"""passthrough: a real host PCI function handed to the guest through VFIO.

    - passthrough: {host: 0000:01:00.0, rom: false}

The host side lives in hil/vfio/ (docs/passthrough.md): preflight, binding to vfio-pci
with a state file written first, and the guaranteed restore.  This kind is the glue: the
binding is the device's helper (entered before QEMU starts, restored after it stops);
the PCI identity the guest must see is read from the host's sysfs when the plan is made.
A profile may allow vfio's unsafe no-IOMMU mode with ``unsafe_noiommu: true``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .base import AttachContext, DeviceKind, PciId
from .registry import DEVICES


@dataclass(frozen=True)
class Passthrough:
    host: str  # the BDF, validated: 0000:01:00.0
    rom: bool = True  # expose the option ROM (false: rombar=0)
    ids: tuple = ()  # PciIds the host reports, filled in by plan()
    allow_noiommu: bool = False
    behind_root_port: bool = False
    kind = "passthrough"


class _Binding:
    """The helper: hil.vfio.Passthrough as a Lifetime with the runner's shape."""

    def __init__(self, spec: Passthrough, run_dir):
        from ..vfio import Passthrough as Vfio
        from ..vfio import parse_bdf

        self.bdf = parse_bdf(spec.host, "passthrough.host")
        self.rom = spec.rom
        self.vfio = Vfio([self.bdf], run_dir=run_dir, allow_noiommu=spec.allow_noiommu)
        self.entered = False

    def __enter__(self):
        self.vfio.__enter__()
        self.entered = True
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.entered:
            self.entered = False
            self.vfio.__exit__(None, None, None)

    def check(self) -> None:
        pass  # a binding does not die; the restore at exit says whether it held

    def qemu_args(self, bus: str | None) -> list[str]:
        from ..vfio import qemu_args

        return qemu_args(self.bdf, rom=self.rom, bus=bus)


@DEVICES.register
class PassthroughKind(DeviceKind):
    name = "passthrough"
    keys = ("host", "rom")
    profile_keys = ("unsafe_noiommu",)
    spec = Passthrough

    def parse_profile(self, f, ctx):
        return {"unsafe_noiommu": bool(f.get("unsafe_noiommu", bool, False))}

    def parse(self, f, ctx):
        from ..vfio import parse_bdf

        host = f.get("host", str, example="host: 0000:01:00.0")
        rom = f.get("rom", bool, True)
        if host is None:
            return None
        try:
            bdf = parse_bdf(host, f.path("host"))
        except UserError as e:
            f.error("host", str(e).split(": ", 1)[1])
            return None
        return Passthrough(host=str(bdf), rom=bool(rom))

    def plan(self, spec, profile):
        from ..vfio import PciHost, Sysfs, parse_bdf

        fn = PciHost(Sysfs("/")).function(parse_bdf(spec.host, "passthrough.host"))
        if fn.vendor is None:
            raise UserError(
                f"passthrough.host: this host has no PCI function {spec.host}. "
                "`hil doctor` lists the devices that can be passed through."
            )
        allow = profile.settings.get("passthrough", {}).get("unsafe_noiommu", False)
        return Passthrough(
            spec.host,
            spec.rom,
            (PciId(fn.vendor, fn.device, fn.class_code or 0),),
            allow,
            spec.behind_root_port,
        )

    def pci_ids(self, spec):
        return list(spec.ids)

    def helper(self, spec, run_dir):
        return _Binding(spec, run_dir)

    def attach(self, spec, ctx: AttachContext):
        bus = ctx.bus.removeprefix(",bus=") or None
        ctx.add(*ctx.helper.qemu_args(bus))
