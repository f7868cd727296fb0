"""What the host's kernel says about its PCI functions, read-only.

Everything here only reads (through :class:`~hil.vfio.sysfs.Sysfs`), so ``hil doctor``
can run it on any machine, and preflight can run it before anything is changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import sysfs as fs
from .bdf import Bdf, bdfs_in_path
from .sysfs import Sysfs

# Drivers the kernel lets share an IOMMU group with a vfio-pci device: they do no DMA
# of their own (the kernel marks them driver_managed_dma).  A member with no driver
# at all is fine too.
DMA_SAFE_DRIVERS = ("vfio-pci", "pci-stub", "pcieport")
BRIDGE_CLASSES = (0x0604, 0x0609)  # PCI-to-PCI, semi-transparent PCI-to-PCI
_DRIVER_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
_MAX_LINK_DEPTH = 8  # bond over vlan over bridge ... a loop in sysfs must not hang us


def valid_driver_name(name: object) -> bool:
    """A driver name safe to put into a sysfs path (no ``/``, no ``..``)."""
    return isinstance(name, str) and bool(_DRIVER_NAME.fullmatch(name)) and name not in {".", ".."}


@dataclass(frozen=True)
class Function:
    """One PCI function as sysfs shows it at one moment."""

    bdf: Bdf
    vendor: int | None
    device: int | None
    class_code: int | None  # 24 bits: base class, subclass, prog-if
    driver: str | None
    override: str | None  # driver_override; None when unset ("(null)")
    group: int | None  # IOMMU group number
    has_reset: bool

    @property
    def ids(self) -> str:
        def hex4(v: int | None) -> str:
            return "????" if v is None else f"{v:04x}"

        return f"{hex4(self.vendor)}:{hex4(self.device)}"

    @property
    def class_text(self) -> str:
        return "??????" if self.class_code is None else f"{self.class_code:06x}"

    @property
    def is_bridge(self) -> bool:
        return self.class_code is not None and (self.class_code >> 8) in BRIDGE_CLASSES


# struct resource flags, as sysfs `resource` prints them (include/linux/ioport.h)
IORESOURCE_IO = 0x100
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
IORESOURCE_MEM_64 = 0x100000
ROM_INDEX = 6  # lines 0-5 are the BARs, line 6 the expansion ROM, then bridge windows


@dataclass(frozen=True)
class Bar:
    """One BAR (or the ROM) as the host kernel assigned it: what the guest must see too."""

    index: int
    start: int
    size: int
    flags: int

    @property
    def is_io(self) -> bool:
        return bool(self.flags & IORESOURCE_IO)

    @property
    def is_64bit(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM_64)

    @property
    def prefetchable(self) -> bool:
        return bool(self.flags & IORESOURCE_PREFETCH)


def parse_resource(text: str) -> list[Bar]:
    """The BARs and ROM in a sysfs ``resource`` file ("start end flags" in hex, per line).

    Unused entries (all zero) are left out; a line that is not three hex numbers with
    start <= end is an error rather than a guess.
    """
    bars = []
    for index, line in enumerate(text.splitlines()[: ROM_INDEX + 1]):
        fields = line.split()
        try:
            start, end, flags = (int(f, 16) for f in fields)
        except ValueError:
            raise ValueError(f"resource line {index}: {line!r} is not 'start end flags'") from None
        if start == end == 0:
            continue
        if end < start or end >= 1 << 64:
            raise ValueError(f"resource line {index}: {line!r}: end before start")
        bars.append(Bar(index, start, end - start + 1, flags))
    return bars


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


class PciHost:
    """Read-only questions about the host's PCI functions, IOMMU and vfio."""

    def __init__(self, sysfs: Sysfs):
        self.fs = sysfs

    # --- functions -------------------------------------------------------------------
    def exists(self, bdf: Bdf) -> bool:
        return self.fs.exists(fs.device(bdf, "vendor"))

    def functions(self) -> list[Bdf]:
        found = (Bdf.parse(name) for name in self.fs.listdir(fs.PCI_DEVICES))
        return sorted(b for b in found if b is not None)

    def driver(self, bdf: Bdf) -> str | None:
        return self.fs.link_name(fs.device(bdf, "driver"))

    def override(self, bdf: Bdf) -> str | None:
        text = self.fs.read(fs.device(bdf, "driver_override"))
        return None if text in (None, "", "(null)") else text

    def group(self, bdf: Bdf) -> int | None:
        name = self.fs.link_name(fs.device(bdf, "iommu_group"))
        return int(name) if name is not None and name.isdigit() else None

    def has_reset(self, bdf: Bdf) -> bool:
        # reset_method (5.15+) lists the methods; the kernel hides it, and the older
        # `reset` file, when the function has none.
        methods = self.fs.read(fs.device(bdf, "reset_method"))
        if methods is not None:
            return bool(methods.strip())
        return self.fs.exists(fs.device(bdf, "reset"))

    def bars(self, bdf: Bdf) -> list[Bar]:
        """The function's BARs and ROM (empty when sysfs has no ``resource`` file)."""
        return parse_resource(self.fs.read(fs.device(bdf, "resource")) or "")

    def function(self, bdf: Bdf) -> Function:
        return Function(
            bdf=bdf,
            vendor=_hex(self.fs.read(fs.device(bdf, "vendor"))),
            device=_hex(self.fs.read(fs.device(bdf, "device"))),
            class_code=_hex(self.fs.read(fs.device(bdf, "class"))),
            driver=self.driver(bdf),
            override=self.override(bdf),
            group=self.group(bdf),
            has_reset=self.has_reset(bdf),
        )

    # --- IOMMU and vfio -----------------------------------------------------------------
    def iommus(self) -> list[str]:
        return self.fs.listdir(fs.CLASS_IOMMU)

    def noiommu_enabled(self) -> bool:
        return (self.fs.read(fs.NOIOMMU_PARAM) or "").strip() in ("Y", "1")

    def vfio_loaded(self) -> bool:
        return self.fs.exists(f"{fs.PCI_DRIVERS}/{fs.VFIO_DRIVER}")

    def groups(self) -> list[int]:
        return sorted(int(n) for n in self.fs.listdir(fs.IOMMU_GROUPS) if n.isdigit())

    def group_members(self, group: int) -> list[Bdf]:
        found = (Bdf.parse(n) for n in self.fs.listdir(f"{fs.IOMMU_GROUPS}/{group}/devices"))
        return sorted(b for b in found if b is not None)

    def group_node(self, group: int) -> str | None:
        """The /dev/vfio node of a group bound to vfio (``noiommu-N`` in no-IOMMU mode)."""
        for name in (str(group), f"noiommu-{group}"):
            rel = f"{fs.DEV_VFIO}/{name}"
            if self.fs.exists(rel):
                return rel
        return None

    # --- what the host itself stands on ------------------------------------------------
    def protected(self) -> dict[Bdf, str]:
        """Functions the host needs: the root filesystem's disk, the default route's NIC.

        Every function on the sysfs path counts (the NVMe and the root port above it),
        since passing either through takes the disk away.
        """
        out: dict[Bdf, str] = {}
        for why, path in self._root_fs_paths() + self._route_paths():
            for bdf in bdfs_in_path(path):
                out.setdefault(bdf, why)
        return out

    def _root_fs_paths(self) -> list[tuple[str, str]]:
        majmin = self._root_majmin()
        if majmin is None:
            return []  # root on a network/virtual fs: its NIC is the route's
        path = self.fs.resolve(f"{fs.DEV_BLOCK}/{majmin}")
        if path is None:
            return []
        why = f"it holds the host's root filesystem (block device {majmin})"
        return [(why, p) for p in self._lower_block_paths(path, 0)]

    def _lower_block_paths(self, path: str, depth: int) -> list[str]:
        # dm/md/loop devices are virtual: what they stand on is listed in slaves/ of
        # the disk (a partition's disk is its parent directory).
        if "/virtual/" not in f"/{path}/" or depth > _MAX_LINK_DEPTH:
            return [path]
        out = []
        for base in (path, path.rsplit("/", 1)[0]):
            for name in self.fs.listdir(f"{base}/slaves"):
                lower = self.fs.resolve(f"{base}/slaves/{name}")
                if lower is not None:
                    out += self._lower_block_paths(lower, depth + 1)
        return out

    def _root_majmin(self) -> str | None:
        majmin = None
        for line in (self.fs.read(fs.MOUNTINFO) or "").splitlines():
            fields = line.split()
            # id parent major:minor root mountpoint ...; the last mount on / wins
            if len(fields) > 4 and fields[4] == "/" and re.fullmatch(r"\d+:\d+", fields[2]):
                majmin = fields[2]
        # major 0: no block device (tmpfs, overlay, 9p, virtiofs, NFS)
        return None if majmin is None or majmin.startswith("0:") else majmin

    def _route_paths(self) -> list[tuple[str, str]]:
        out = []
        for ifname in self.default_route_ifaces():
            why = f"it carries the host's default route (interface {ifname})"
            out += [(why, p) for p in self._lower_net_paths(ifname, 0)]
        return out

    def default_route_ifaces(self) -> list[str]:
        names = []
        for line in (self.fs.read(fs.ROUTE4) or "").splitlines()[1:]:
            f = line.split()
            # Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            if len(f) > 7 and f[1] == "00000000" and f[7] == "00000000":
                names.append(f[0])
        for line in (self.fs.read(fs.ROUTE6) or "").splitlines():
            f = line.split()
            # dest dest_len src src_len next_hop metric refcnt use flags iface
            if len(f) == 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo":
                names.append(f[9])
        return [n for n in dict.fromkeys(names) if valid_driver_name(n)]

    def _lower_net_paths(self, ifname: str, depth: int) -> list[str]:
        # A bond, VLAN or bridge is virtual; its ports are its lower_* links.
        path = self.fs.resolve(f"{fs.CLASS_NET}/{ifname}")
        if path is None or depth > _MAX_LINK_DEPTH:
            return []
        if "/virtual/" not in f"/{path}/":
            return [path]
        out = []
        for name in self.fs.listdir(f"{fs.CLASS_NET}/{ifname}"):
            if name.startswith("lower_") and valid_driver_name(name[6:]):
                out += self._lower_net_paths(name[6:], depth + 1)
        return out
