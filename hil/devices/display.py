"""display: a display-class PCI function (no pixels are looked at).

- display: {model: std}      # VGA (class 0300) or bochs (bochs-display, class 0380)
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import qemuopt
from .base import AttachContext, DeviceKind, PciId
from .registry import DEVICES

MODELS = {
    "std": ("VGA", PciId(0x1234, 0x1111, 0x030000)),
    "bochs": ("bochs-display", PciId(0x1234, 0x1111, 0x038000)),
}


@dataclass(frozen=True)
class Display:
    model: str = "std"
    behind_root_port: bool = False
    kind = "display"


@DEVICES.register
class DisplayKind(DeviceKind):
    name = "display"
    keys = ("model",)
    spec = Display

    def parse(self, f, ctx):
        model = f.choice("model", MODELS, "std")
        return Display(model=model) if model else None

    def pci_ids(self, spec):
        return [MODELS[spec.model][1]]

    def attach(self, spec, ctx: AttachContext):
        ctx.add("-device", qemuopt.opts(MODELS[spec.model][0]) + ctx.bus)
