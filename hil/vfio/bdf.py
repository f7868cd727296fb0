"""PCI addresses (domain:bus:device.function) and the QEMU arguments built from them.

A BDF is the only user-given value that reaches QEMU's ``-device vfio-pci`` option,
and it reaches it only after this module's regex has accepted it and it has been
printed back in canonical form, so no comma or ``=`` of the user's can add options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

# Domain: the kernel prints at least 4 hex digits (VMD domains have 5); bus: 2;
# device: 00-1f; function: 0-7.  The domain may be left out (it is then 0000).
_BDF = re.compile(
    r"(?:(?P<domain>[0-9a-fA-F]{4,8}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<dev>[01][0-9a-fA-F])\.(?P<fn>[0-7])"
)
# QEMU's rule for ids (qdev ids, bus names): a letter, then letters, digits, - . _
_QEMU_ID = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, order=True)
class Bdf:
    domain: int
    bus: int
    dev: int
    fn: int

    @classmethod
    def parse(cls, text: str) -> Bdf | None:
        m = _BDF.fullmatch(text)
        if not m:
            return None
        return cls(int(m["domain"] or "0", 16), int(m["bus"], 16), int(m["dev"], 16), int(m["fn"]))

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.dev:02x}.{self.fn}"


def parse_bdf(value: object, where: str) -> Bdf:
    """A BDF from user input; ``where`` names the file and key (``gpu.yaml:4: passthrough[0].host``)."""
    bdf = Bdf.parse(value.strip()) if isinstance(value, str) else None
    if bdf is None:
        raise UserError(
            f"{where}: {value!r} is not a PCI address. Write it as domain:bus:device.function"
            " in hex, e.g. 0000:01:00.0 (or 01:00.0 for domain 0000), as `lspci -D` prints it;"
            " `hil doctor` lists the devices that can be passed through."
        )
    return bdf


def bdfs_in_path(path: str) -> list[Bdf]:
    """The PCI functions a sysfs device path runs through, outermost first.

    ``sys/devices/pci0000:00/0000:00:1c.0/0000:03:00.0/nvme/nvme0`` gives the root
    port and the NVMe function; only full components with a domain count, so a
    name like ``pci0000:00`` never does.
    """
    out = []
    for part in path.split("/"):
        m = _BDF.fullmatch(part)
        if m and m["domain"]:
            out.append(Bdf.parse(part))
    return out


def qemu_args(
    bdf: Bdf, *, rom: bool = True, dev_id: str | None = None, bus: str | None = None
) -> list[str]:
    """``-device vfio-pci,host=BDF[,id=..][,bus=..][,rombar=0]`` from validated values.

    ``rom=False`` hides the option ROM from the guest (rombar=0): a ROM the guest
    firmware would run is a variable the tests do not want.
    """
    if not isinstance(bdf, Bdf):
        raise TypeError(f"qemu_args takes a Bdf, not {type(bdf).__name__}")
    opts = [f"vfio-pci,host={bdf}"]
    for name, value in (("id", dev_id), ("bus", bus)):
        if value is None:
            continue
        if not _QEMU_ID.fullmatch(value):
            raise ValueError(f"{name}={value!r} is not a QEMU id (a letter, then [A-Za-z0-9._-])")
        opts.append(f"{name}={value}")
    if not rom:
        opts.append("rombar=0")
    return ["-device", ",".join(opts)]
