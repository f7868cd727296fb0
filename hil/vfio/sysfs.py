"""The kernel's files (sysfs, /dev/vfio, a few of /proc), all read and written under one root.

On a host the root is ``/``; the tests build a tree in a temporary directory and
subclass :class:`Sysfs` so that writes to ``bind``/``unbind``/``drivers_probe`` have
the kernel's effects.  Every path hil/vfio touches is spelled once here, relative to
the root, so nothing can reach the real ``/sys`` while a test runs.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

PCI_DEVICES = "sys/bus/pci/devices"
PCI_DRIVERS = "sys/bus/pci/drivers"
DRIVERS_PROBE = "sys/bus/pci/drivers_probe"
IOMMU_GROUPS = "sys/kernel/iommu_groups"
CLASS_IOMMU = "sys/class/iommu"
CLASS_NET = "sys/class/net"
DEV_BLOCK = "sys/dev/block"
MODULE_VFIO_PCI = "sys/module/vfio_pci"
NOIOMMU_PARAM = "sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
DEV_VFIO = "dev/vfio"
MOUNTINFO = "proc/self/mountinfo"
ROUTE4 = "proc/net/route"
ROUTE6 = "proc/net/ipv6_route"

VFIO_DRIVER = "vfio-pci"

# Reads that mean "not there (any more)": a missing file, or a device that went away
# while we read it (sysfs answers ENODEV for attributes of a removed device).
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ENODEV)


def device(bdf: object, attr: str = "") -> str:
    """The sysfs path of a PCI function (or one of its attributes)."""
    base = f"{PCI_DEVICES}/{bdf}"
    return f"{base}/{attr}" if attr else base


def driver_file(driver: str, name: str) -> str:
    return f"{PCI_DRIVERS}/{driver}/{name}"


class Sysfs:
    """Reads and writes kernel files under ``root``; the one door to the host's kernel."""

    def __init__(self, root: str | Path = "/"):
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def read(self, rel: str) -> str | None:
        """The file's text without the trailing newline, or None when it is not there."""
        try:
            return self.path(rel).read_text(errors="replace").rstrip("\n")
        except OSError as e:
            if e.errno in _GONE:
                return None
            raise

    def write(self, rel: str, text: str) -> None:
        """One write(2) of ``text``, as ``echo text > file`` does; never creates a file.

        sysfs hands the kernel exactly the bytes of one write call, so the value must
        go out in a single call (a buffered writer could split it).
        """
        data = text.encode()
        fd = os.open(self.path(rel), os.O_WRONLY)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)", rel)

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def link_name(self, rel: str) -> str | None:
        """The last component of a symlink's target (``driver`` -> ``nvme``), or None."""
        try:
            return os.path.basename(os.readlink(self.path(rel)))
        except OSError as e:
            if e.errno in _GONE or e.errno == errno.EINVAL:
                return None
            raise

    def resolve(self, rel: str) -> str | None:
        """The real path of ``rel`` relative to the root, or None (missing, or outside it).

        Kernel links are relative and stay inside /sys; a link that would leave the
        root (a damaged test tree, say) is treated as absent rather than followed.
        """
        p = self.path(rel)
        if not os.path.lexists(p):
            return None
        real = Path(os.path.realpath(p))
        root = Path(os.path.realpath(self.root))
        try:
            return str(real.relative_to(root))
        except ValueError:
            return None

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except OSError as e:
            if e.errno in _GONE:
                return []
            raise

    def may_open(self, rel: str) -> bool:
        """Whether this process may open ``rel`` for reading and writing."""
        return os.access(self.path(rel), os.R_OK | os.W_OK)
