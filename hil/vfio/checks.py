"""Preflight: may these PCI functions be handed to a guest?  Every answer read-only.

Each check returns :class:`Problem`\\ s (a short reason for ``hil doctor``'s table, a
fix for the error message); :class:`Preflight` turns them into one InfraError that
names every device and every fix, before anything on the host has changed.  The
only action preflight takes is loading the vfio-pci module when it is not loaded.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import InfraError, UserError
from . import sysfs as fs
from .bdf import Bdf
from .host import DMA_SAFE_DRIVERS, PciHost
from .sysfs import Sysfs

# The profile key that allows vfio's unsafe no-IOMMU mode (named in messages).
NOIOMMU_KEY = "unsafe_noiommu"
DOC = "docs/passthrough.md"

# A runner takes an argv and returns (exit status, combined output).
Runner = Callable[[Sequence[str]], tuple[int, str]]


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not installed"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer after 60 s"
    return p.returncode, (p.stdout + p.stderr).strip()


@dataclass(frozen=True)
class Problem:
    reason: str  # "it has no reset method"
    fix: str  # "use ... (docs/passthrough.md)"


class Preflight:
    """The checks of docs/passthrough.md, for one run's set of devices."""

    def __init__(self, sysfs: Sysfs, *, allow_noiommu: bool = False, runner: Runner = run_command):
        self.host = PciHost(sysfs)
        self.fs = sysfs
        self.allow_noiommu = allow_noiommu
        self.runner = runner
        self._protected: dict[Bdf, str] | None = None

    # --- the whole run -------------------------------------------------------------------
    def run(self, bdfs: Sequence[Bdf], where: str = "passthrough") -> None:
        """Raise UserError for unknown devices, InfraError for any other problem."""
        self.require_present(bdfs, where)
        problems = [f"vfio: {p.reason}. Fix: {p.fix}." for p in self.load_vfio()]
        problems += [f"vfio: {p.reason}. Fix: {p.fix}." for p in self.iommu_problems()]
        if not problems:  # without vfio/an IOMMU every device would repeat the same
            for bdf in bdfs:
                for p in self.device_problems(bdf, set(bdfs)):
                    problems.append(f"passthrough {bdf}: {p.reason}. Fix: {p.fix}.")
        if problems:
            raise InfraError(" ".join(problems) + f" Nothing on the host was changed ({DOC}).")

    def require_present(self, bdfs: Sequence[Bdf], where: str) -> None:
        if len(set(bdfs)) != len(bdfs):
            dup = sorted({str(b) for b in bdfs if bdfs.count(b) > 1})
            raise UserError(f"{where}: {', '.join(dup)} is listed twice; list each device once.")
        missing = [str(b) for b in bdfs if not self.host.exists(b)]
        if missing:
            raise UserError(
                f"{where}: this host has no PCI device {', '.join(missing)}. Check the address"
                " with `lspci -D` (or `hil doctor`, which lists the devices that can be passed"
                " through); nothing on the host was changed."
            )

    # --- vfio and the IOMMU ----------------------------------------------------------------
    def load_vfio(self) -> list[Problem]:
        if self.host.vfio_loaded():
            return []
        rc, out = self.runner(["modprobe", "vfio-pci"])
        if self.host.vfio_loaded():
            return []
        said = f"`modprobe vfio-pci` exited {rc}" + (f": {out}" if out else "")
        return [
            Problem(
                f"the vfio-pci driver is not loaded and {said}",
                "install the kernel's vfio modules (CONFIG_VFIO_PCI; Debian ships them in"
                " linux-image-*) and run `modprobe vfio-pci` as root",
            )
        ]

    def iommu_problems(self) -> list[Problem]:
        if self.host.iommus():
            return []
        if not self.allow_noiommu:
            return [
                Problem(
                    "no IOMMU is active (/sys/class/iommu is empty)",
                    "enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware set-up and boot"
                    " with intel_iommu=on iommu=pt on the kernel command line; to test binding"
                    f" alone, the profile key {NOIOMMU_KEY}: true allows vfio's unsafe no-IOMMU"
                    " mode",
                )
            ]
        if self.host.noiommu_enabled():
            return []
        return [
            Problem(
                f"no IOMMU is active, and {NOIOMMU_KEY} is set but vfio's unsafe no-IOMMU"
                f" mode is off ({fs.NOIOMMU_PARAM} is not Y)",
                f"as root: echo Y > /{fs.NOIOMMU_PARAM} (or load vfio with"
                " enable_unsafe_noiommu_mode=1)",
            )
        ]

    # --- one device ------------------------------------------------------------------------
    def device_problems(self, bdf: Bdf, batch: set[Bdf]) -> list[Problem]:
        """Why ``bdf`` may not be passed through, with ``batch`` the run's other devices."""
        f = self.host.function(bdf)
        out: list[Problem] = []
        if f.is_bridge:
            out.append(
                Problem(
                    f"it is a PCI bridge (class {f.class_text}); vfio-pci takes only endpoints",
                    "pass the device behind the bridge instead",
                )
            )
        if self._protected is None:  # one look per preflight: doctor asks for every device
            self._protected = self.host.protected()
        why = self._protected.get(bdf)
        if why:
            out.append(Problem(why, "pass another device: the host cannot run without this one"))
        if not f.has_reset:
            out.append(
                Problem(
                    "it has no reset method (no reset_method or reset file in sysfs)",
                    "hil needs a device it can reset to a clean state between runs: use one"
                    " with FLR, or a slot where a bus reset reaches it"
                    f" ({DOC}, 'A device that will not reset')",
                )
            )
        out += self.group_problems(f.bdf, f.group, batch)
        if f.driver != fs.VFIO_DRIVER and not self.fs.may_open(fs.device(bdf, "driver_override")):
            out.append(
                Problem(
                    "this user may not write its driver_override",
                    "run hil as root: rebinding a driver needs CAP_SYS_ADMIN",
                )
            )
        return out

    def group_problems(self, bdf: Bdf, group: int | None, batch: set[Bdf]) -> list[Problem]:
        if group is None:
            if not self.host.iommus():
                # The missing IOMMU is reported once for the host; in no-IOMMU mode vfio
                # makes a group of the device's own when it binds.
                return []
            return [
                Problem(
                    "it is in no IOMMU group",
                    "check that the IOMMU covers this device (dmesg | grep -i -e DMAR -e IOMMU)",
                )
            ]
        out = []
        for member in self.host.group_members(group):
            if member == bdf or member in batch:
                continue
            drv = self.host.driver(member)
            if drv is None or drv in DMA_SAFE_DRIVERS:
                continue
            m = self.host.function(member)
            out.append(
                Problem(
                    f"its IOMMU group {group} also holds {member} ({m.ids}, class"
                    f" {m.class_text}, driver {drv}), which would stay with the host",
                    f"pass {member} through as well (list it under passthrough), bind it to"
                    " vfio-pci yourself, or move the card to a slot with an IOMMU group of its"
                    " own",
                )
            )
        return out

    def node_problems(self, bdf: Bdf) -> list[Problem]:
        """After binding: may this process open the group's /dev/vfio node (and the container)?"""
        group = self.host.group(bdf)
        node = None if group is None else self.host.group_node(group)
        if node is None:
            return [
                Problem(
                    f"vfio-pci took it but made no /dev/vfio node for group {group}",
                    "check dmesg for vfio errors",
                )
            ]
        out = []
        for rel in (node, f"{fs.DEV_VFIO}/vfio"):
            if not self.fs.may_open(rel):
                out.append(
                    Problem(
                        f"this user may not open /{rel}",
                        "run hil as root, or give the user the node with a udev rule"
                        ' (SUBSYSTEM=="vfio", OWNER="<user>")',
                    )
                )
        return out
