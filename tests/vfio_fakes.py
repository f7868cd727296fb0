"""A fake host for hil/vfio: a sysfs-shaped tree in a directory, and a kernel that acts on writes.

:class:`FakeHost` builds the tree the way the kernel lays it out (device directories
under sys/devices, relative symlinks for ``driver``, ``iommu_group``, bus and class
entries).  :class:`FakeKernel` is a :class:`~hil.vfio.sysfs.Sysfs` whose ``write``
applies the kernel's semantics to that tree: driver_override, unbind, bind,
drivers_probe (with the override/id match rules), /dev/vfio group nodes coming and
going.  All of its state is the tree itself, so a second process (or a second
FakeKernel) sees the same host; only the failure injections live in the object.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from hil.vfio.bdf import Bdf
from hil.vfio.sysfs import Sysfs

ROOT_BUS = "sys/devices/pci0000:00"
_META = ".fake/drivers.json"  # driver -> the vendor:device ids it matches
_NOIOMMU = "sys/module/vfio/parameters/enable_unsafe_noiommu_mode"


def _link(root: Path, at: str, target: str) -> None:
    """A relative symlink at ``at`` pointing to ``target`` (both relative to root)."""
    link = root / at
    link.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(link):
        link.unlink()
    os.symlink(os.path.relpath(root / target, link.parent), link)


def _device_path(root: Path, bdf: str) -> str:
    return os.path.relpath(os.path.realpath(root / f"sys/bus/pci/devices/{bdf}"), root)


def _join_group(root: Path, bdf: str, group: int) -> None:
    path = _device_path(root, bdf)
    (root / f"sys/kernel/iommu_groups/{group}/devices").mkdir(parents=True, exist_ok=True)
    _link(root, f"sys/kernel/iommu_groups/{group}/devices/{bdf}", path)
    _link(root, f"{path}/iommu_group", f"sys/kernel/iommu_groups/{group}")


class FakeHost:
    """Builds a host's sysfs/dev/proc tree under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for d in ("sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/kernel/iommu_groups",
                  "sys/class/iommu", "sys/class/net", "sys/dev/block", "sys/block",
                  "dev", "proc/self", "proc/net", ".fake"):  # fmt: skip
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "sys/bus/pci/drivers_probe").write_text("")
        (self.root / _META).write_text("{}")
        (self.root / "proc/self/mountinfo").write_text(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
            "27 1 0:30 / / rw,relatime - tmpfs tmpfs rw\n"
        )
        (self.root / "proc/net/route").write_text(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        )

    # --- drivers, modules, IOMMU ----------------------------------------------------------
    def add_driver(self, name: str, ids: tuple[str, ...] = ()) -> None:
        d = self.root / "sys/bus/pci/drivers" / name
        d.mkdir(parents=True, exist_ok=True)
        for f in ("bind", "unbind", "new_id", "remove_id"):
            (d / f).write_text("")
        (self.root / "sys/module" / name.replace("-", "_")).mkdir(parents=True, exist_ok=True)
        meta = json.loads((self.root / _META).read_text())
        meta[name] = list(ids)
        (self.root / _META).write_text(json.dumps(meta))

    def unload_driver(self, name: str) -> None:
        """rmmod: the driver lets go of its devices and its directory goes."""
        d = self.root / "sys/bus/pci/drivers" / name
        for entry in d.iterdir():
            if entry.is_symlink():
                (entry / "driver").unlink()
        shutil.rmtree(d)

    def load_vfio(self, noiommu: bool = False) -> None:
        """What `modprobe vfio-pci` does: the driver, its modules, /dev/vfio/vfio."""
        self.add_driver("vfio-pci")
        params = self.root / "sys/module/vfio/parameters"
        params.mkdir(parents=True, exist_ok=True)
        (params / "enable_unsafe_noiommu_mode").write_text("Y\n" if noiommu else "N\n")
        (self.root / "dev/vfio").mkdir(parents=True, exist_ok=True)
        (self.root / "dev/vfio/vfio").write_text("")

    def add_iommu(self, name: str = "dmar0") -> None:
        (self.root / "sys/class/iommu" / name).mkdir(parents=True, exist_ok=True)

    # --- devices -------------------------------------------------------------------------
    def add_device(
        self,
        bdf: str,
        ids: str = "8086:1234",
        class_code: int = 0x010802,
        *,
        driver: str | None = None,
        group: int | None = None,
        reset: str | None = "flr bus",
        parent: str = ROOT_BUS,
    ) -> str:
        """A PCI function; returns its sys/devices path.  ``reset=None``: no reset method."""
        bdf = str(Bdf.parse(bdf))
        path = f"{parent}/{bdf}"
        d = self.root / path
        d.mkdir(parents=True)
        vendor, device = ids.split(":")
        (d / "vendor").write_text(f"0x{vendor}\n")
        (d / "device").write_text(f"0x{device}\n")
        (d / "class").write_text(f"0x{class_code:06x}\n")
        (d / "driver_override").write_text("(null)\n")
        (d / "resource").write_text("0x00000000fe000000 0x00000000fe003fff 0x0000000000140204\n")
        if reset is not None:
            (d / "reset_method").write_text(reset + "\n")
            (d / "reset").write_text("")
        _link(self.root, f"sys/bus/pci/devices/{bdf}", path)
        if group is not None:
            self.join_group(bdf, group)
        if driver is not None:
            _link(self.root, f"{path}/driver", f"sys/bus/pci/drivers/{driver}")
            _link(self.root, f"sys/bus/pci/drivers/{driver}/{bdf}", path)
            if driver == "vfio-pci" and group is not None:
                (self.root / f"dev/vfio/{group}").write_text("")
        return path

    def join_group(self, bdf: str, group: int) -> None:
        _join_group(self.root, bdf, group)

    def device_path(self, bdf: str) -> str:
        return _device_path(self.root, bdf)

    def remove_device(self, bdf: str) -> None:
        """Hot-removal: the function, its links and its group entry vanish."""
        path = self.device_path(bdf)
        for link in (self.root / "sys").rglob(bdf):
            if link.is_symlink():
                link.unlink()
        shutil.rmtree(self.root / path)

    # --- what the host stands on ---------------------------------------------------------
    def set_root_disk(self, bdf: str, disk: str = "nvme0n1", majmin: str = "259:0") -> None:
        """The root filesystem on a partition of a disk behind ``bdf``."""
        disk_path = f"{self.device_path(bdf)}/nvme/nvme0/{disk}"
        (self.root / disk_path / f"{disk}p1").mkdir(parents=True)
        _link(self.root, f"sys/block/{disk}", disk_path)
        major, minor = majmin.split(":")
        _link(self.root, f"sys/dev/block/{major}:{int(minor) + 1}", f"{disk_path}/{disk}p1")
        with open(self.root / "proc/self/mountinfo", "a") as f:
            f.write(f"30 27 {major}:{int(minor) + 1} / / rw,relatime - ext4 /dev/{disk}p1 rw\n")

    def set_root_on_dm(self, bdf: str) -> None:
        """The root filesystem on device-mapper (LVM) over a disk behind ``bdf``."""
        disk_path = f"{self.device_path(bdf)}/nvme/nvme0/nvme0n1"
        (self.root / disk_path).mkdir(parents=True)
        dm = "sys/devices/virtual/block/dm-0"
        (self.root / dm / "slaves").mkdir(parents=True)
        _link(self.root, f"{dm}/slaves/nvme0n1", disk_path)
        _link(self.root, "sys/dev/block/253:0", dm)
        with open(self.root / "proc/self/mountinfo", "a") as f:
            f.write("31 27 253:0 / / rw,relatime - ext4 /dev/mapper/vg-root rw\n")

    def set_default_route(self, bdf: str | None, ifname: str = "enp1s0", *, bond: str = "") -> None:
        """The default route through ``ifname`` (of ``bdf``), or through a bond over it."""
        if bdf is not None:
            net = f"{self.device_path(bdf)}/net/{ifname}"
            (self.root / net).mkdir(parents=True)
            _link(self.root, f"sys/class/net/{ifname}", net)
            _link(self.root, f"{net}/device", self.device_path(bdf))
        route_if = ifname
        if bond:
            vnet = f"sys/devices/virtual/net/{bond}"
            (self.root / vnet).mkdir(parents=True)
            _link(self.root, f"sys/class/net/{bond}", vnet)
            _link(self.root, f"{vnet}/lower_{ifname}", f"sys/class/net/{ifname}")
            route_if = bond
        with open(self.root / "proc/net/route", "a") as f:
            f.write(f"{route_if}\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n")


class FakeKernel(Sysfs):
    """A Sysfs over a FakeHost tree whose writes act as the kernel's do.

    Failure injection: ``fail(rel, errno_)`` makes the next write to ``rel`` fail (a
    write that fails half-way through a bind or restore); ``on_write(rel, fn)`` runs
    ``fn`` just before a write to ``rel`` (a device that disappears); ``probe_fails``
    holds drivers whose probe fails, leaving the device unbound as a real failed probe
    does.  ``writes`` logs every write, in order.
    """

    def __init__(self, root: Path):
        super().__init__(root)
        self.failures: dict[str, list[int]] = {}
        self.hooks: dict[str, Callable[[], None]] = {}
        self.probe_fails: set[str] = set()
        self.writes: list[tuple[str, str]] = []

    def fail(self, rel: str, errno_: int, times: int = 1) -> None:
        self.failures.setdefault(rel, []).extend([errno_] * times)

    def on_write(self, rel: str, fn: Callable[[], None]) -> None:
        self.hooks[rel] = fn

    # --- the write path ------------------------------------------------------------------
    def write(self, rel: str, text: str) -> None:
        self.writes.append((rel, text))
        if rel in self.hooks:
            self.hooks.pop(rel)()
        if self.failures.get(rel):
            code = self.failures[rel].pop(0)
            raise OSError(code, os.strerror(code), str(self.path(rel)))
        if not os.path.lexists(self.path(rel)):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.path(rel)))
        parts = rel.split("/")
        value = text.strip()
        if rel == "sys/bus/pci/drivers_probe":
            return self._probe(self._device(value))
        if rel.startswith("sys/bus/pci/drivers/") and len(parts) == 6 and parts[5] == "unbind":
            return self._unbind(parts[4], self._device(value))
        if rel.startswith("sys/bus/pci/drivers/") and len(parts) == 6 and parts[5] == "bind":
            return self._bind_store(parts[4], self._device(value))
        if rel.startswith("sys/bus/pci/devices/") and parts[-1] == "driver_override":
            # The kernel keeps up to the first newline; an empty value clears it.
            self.path(rel).write_text((text.split("\n")[0] or "(null)") + "\n")
            return None
        raise OSError(errno.EACCES, "fake kernel: not a writable attribute", rel)

    def _device(self, name: str) -> str:
        if Bdf.parse(name) is None or not self.exists(f"sys/bus/pci/devices/{name}/vendor"):
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), name)
        return name

    # --- the driver core -----------------------------------------------------------------
    def _drivers(self) -> dict[str, list[str]]:
        """The loaded drivers (those with a directory) and the ids each matches."""
        meta = json.loads(self.path(_META).read_text())
        return {d: ids for d, ids in meta.items() if self.exists(f"sys/bus/pci/drivers/{d}")}

    def _matches(self, driver: str, bdf: str) -> bool:
        override = self.read(f"sys/bus/pci/devices/{bdf}/driver_override")
        if override not in (None, "(null)"):
            return override == driver  # an override matches that driver only
        vendor = (self.read(f"sys/bus/pci/devices/{bdf}/vendor") or "")[2:]
        device = (self.read(f"sys/bus/pci/devices/{bdf}/device") or "")[2:]
        return f"{vendor}:{device}" in self._drivers().get(driver, [])

    def _current(self, bdf: str) -> str | None:
        return self.link_name(f"sys/bus/pci/devices/{bdf}/driver")

    def _probe(self, bdf: str) -> None:
        if self._current(bdf) is not None:
            return
        for driver in self._drivers():
            if self._matches(driver, bdf):
                self._attach(driver, bdf)
                return

    def _bind_store(self, driver: str, bdf: str) -> None:
        if self._current(bdf) is not None or not self._matches(driver, bdf):
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), bdf)
        self._attach(driver, bdf)
        if self._current(bdf) != driver:
            raise OSError(errno.ENXIO, os.strerror(errno.ENXIO), bdf)

    def _attach(self, driver: str, bdf: str) -> None:
        if driver in self.probe_fails:
            return
        root = self.root
        path = _device_path(root, bdf)
        _link(root, f"{path}/driver", f"sys/bus/pci/drivers/{driver}")
        _link(root, f"sys/bus/pci/drivers/{driver}/{bdf}", path)
        if driver == "vfio-pci":
            self._vfio_node(bdf, create=True)

    def _unbind(self, driver: str, bdf: str) -> None:
        if self._current(bdf) != driver:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), bdf)
        (self.root / f"sys/bus/pci/devices/{bdf}/driver").unlink()
        (self.root / f"sys/bus/pci/drivers/{driver}/{bdf}").unlink()
        if driver == "vfio-pci":
            self._vfio_node(bdf, create=False)

    def _vfio_node(self, bdf: str, create: bool) -> None:
        """vfio makes /dev/vfio/N when a group's first device binds, drops it after the last.

        In no-IOMMU mode a device without a group gets one invented for it on bind,
        with the node noiommu-N; both go away on unbind.
        """
        group = self.link_name(f"sys/bus/pci/devices/{bdf}/iommu_group")
        if group is None:
            if not create or self.read(_NOIOMMU) != "Y":
                return
            group = str(100 + len(self.listdir("sys/kernel/iommu_groups")))
            _join_group(self.root, bdf, int(group))
            (self.root / f"dev/vfio/noiommu-{group}").write_text("")
            return
        invented = self.root / f"dev/vfio/noiommu-{group}"
        if invented.exists():
            if not create:
                invented.unlink()
                path = _device_path(self.root, bdf)
                (self.root / f"{path}/iommu_group").unlink()
                shutil.rmtree(self.root / f"sys/kernel/iommu_groups/{group}")
            return
        node = self.root / "dev/vfio" / group
        if create:
            node.write_text("")
            return
        members = self.listdir(f"sys/kernel/iommu_groups/{group}/devices")
        if not any(self._current(m) == "vfio-pci" for m in members):
            node.unlink(missing_ok=True)


def hold_device(root: str, registry: str, run_dir: str, bdf: str) -> None:
    """Child-process body: bind ``bdf`` in the fake tree at ``root``, say so, wait to be killed."""
    import sys
    import time

    from hil.vfio import Passthrough

    def no_commands(argv: object) -> tuple[int, str]:
        raise AssertionError(f"the child must not run {argv}")

    kernel = FakeKernel(Path(root))
    with Passthrough(
        [Bdf.parse(bdf)], run_dir=run_dir, registry=registry, sysfs=kernel, runner=no_commands
    ):
        sys.stdout.write("bound\n")
        sys.stdout.flush()
        time.sleep(120)  # the test kills us long before this
