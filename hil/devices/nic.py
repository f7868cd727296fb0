"""nic: a network card on QEMU's user network, its traffic kept as a pcap.

- nic: {model: e1000}        # or virtio-net
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import qemuopt
from .base import AttachContext, DeviceKind, PciId
from .registry import DEVICES

MODELS = {  # model -> (QEMU device, PCI identity)
    "e1000": ("e1000", PciId(0x8086, 0x100E, 0x020000)),
    "virtio-net": ("virtio-net-pci", PciId(0x1AF4, 0x1000, 0x020000)),
}


@dataclass(frozen=True)
class Nic:
    model: str = "e1000"
    behind_root_port: bool = False
    kind = "nic"


@DEVICES.register
class NicKind(DeviceKind):
    name = "nic"
    keys = ("model",)
    spec = Nic

    def parse(self, f, ctx):
        model = f.choice("model", MODELS, "e1000")
        return Nic(model=model) if model else None

    def pci_ids(self, spec):
        return [MODELS[spec.model][1]]

    def attach(self, spec, ctx: AttachContext):
        pcap = ctx.file("pcap", f"{ctx.name}.pcap")
        ctx.add("-netdev", qemuopt.opts("user", id=ctx.name))
        ctx.add("-device", qemuopt.opts(MODELS[spec.model][0], netdev=ctx.name) + ctx.bus)
        ctx.add(
            "-object",
            qemuopt.opts("filter-dump", id=f"{ctx.name}dump", netdev=ctx.name, file=pcap),
        )
