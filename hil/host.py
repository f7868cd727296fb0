"""Facts about the host: tools, their versions, KVM.  Used by the planner and `hil doctor`.

Everything here is a cheap probe (a version flag, an ioctl) and is cached per process.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
# QEMU's firmware directory; a bundle for a host without packages (tools/gpu-run) sets
# HIL_QEMU_DATADIR, and runs then also pass it to QEMU as `-L`.
DATADIR_ENV = "HIL_QEMU_DATADIR"
QEMU_DATADIR = Path(os.environ.get(DATADIR_ENV) or "/usr/share/qemu")
QBOOT = QEMU_DATADIR / "qboot.rom"
# The image builder's tools; where they are missing, prebuilt images may stand in.
BUILD_TOOLS = ("nasm", "gcc", "ld", "objcopy")
PREBUILT_ENV = "PXOS_HIL_PREBUILT"  # a directory of prebuilt images (hil/image.py)
KVM_GET_API_VERSION = 0xAE00

# program -> (Debian package, what is lost without it)
TOOLS = {
    QEMU: ("qemu-system-x86", "every run: nothing can boot"),
    "qemu-img": ("qemu-utils", "NVMe disks over existing files (copy-on-write overlays)"),
    "nasm": ("nasm", "building the image (boot sector, kernel entry)"),
    "gcc": ("gcc", "building the image (microkernel)"),
    "ld": ("binutils", "building the image (linking)"),
    "objcopy": ("binutils", "building the image (flat binary for the boot sector)"),
}


@dataclass(frozen=True)
class Kvm:
    usable: bool
    reason: str  # why not, or how it was checked
    nested: bool  # this host is itself a virtual machine


@functools.cache
def which(program: str) -> str | None:
    return shutil.which(program)


@functools.cache
def version(program: str) -> str | None:
    """First line of ``program --version`` (nasm: -v), or None when missing."""
    exe = which(program)
    if exe is None:
        return None
    flag = "-v" if program == "nasm" else "--version"
    try:
        out = subprocess.run([exe, flag], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else ""


def qemu_version() -> tuple[int, int, int] | None:
    v = version(QEMU)
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", v or "")
    return tuple(int(x) for x in m.groups()) if m else None


@functools.cache
def kvm() -> Kvm:
    nested = _running_in_vm()
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return Kvm(
            False,
            "/dev/kvm does not exist (no KVM module, or not exposed to this container/VM)",
            nested,
        )
    except PermissionError:
        return Kvm(False, "/dev/kvm is not accessible to this user (add it to group kvm)", nested)
    except OSError as e:
        return Kvm(False, f"/dev/kvm cannot be opened: {e}", nested)
    try:
        api = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as e:
        return Kvm(False, f"KVM_GET_API_VERSION failed: {e}", nested)
    finally:
        os.close(fd)
    if api != 12:
        return Kvm(False, f"unexpected KVM API version {api}", nested)
    return Kvm(True, "/dev/kvm opened, API version 12", nested)


def _running_in_vm() -> bool:
    """The CPU's 'hypervisor' flag: we are a guest, so any KVM here is nested."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " hypervisor" in line
    except OSError:
        pass
    return False


def memory_bytes() -> int | None:
    """The host's physical memory (None if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return None


def choose_accel(requested: str, boot: str) -> tuple[str, str]:
    """Resolve a profile's accel (auto/kvm/tcg) for this host: (accel, why)."""
    k = kvm()
    if requested == "tcg":
        return "tcg", "profile asks for tcg"
    if requested == "kvm":
        return "kvm", "profile asks for kvm" + ("" if k.usable else f" (but {k.reason})")
    if not k.usable:
        return "tcg", f"auto: KVM unusable ({k.reason})"
    if boot == "bios" and k.nested:
        return "tcg", (
            "auto: this host is itself a VM, so KVM is nested and emulates 16-bit "
            "BIOS code instruction by instruction (SeaBIOS takes seconds); TCG "
            "reaches the boot sector far sooner"
        )
    if boot == "bios":
        return "kvm", "auto: KVM usable on bare metal"
    return "kvm", (
        "auto: KVM usable and the PVH path skips BIOS code, so hardware "
        "virtualisation (real hlt exits, KVM halt statistics) costs little"
    )
