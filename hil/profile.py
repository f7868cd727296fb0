"""Machine profiles: qemu_configs/<name>.yaml (format: docs/profiles.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import devices as dev
from .paths import PROFILES as PROFILE_DIR
from .paths import REPO
from .yamlsrc import Fields, Problems, load, parse_size, suggest

MACHINES = ("q35", "pc")
ACCELS = ("auto", "kvm", "tcg")
BOOT_PATHS = ("bios", "pvh")
BASE_KEYS = (
    "description",
    "machine",
    "accel",
    "boot",
    "memory",
    "cpus",
    "cpu",
    "acpi",
    "iommu",
    "iommu_intremap",
    "devices",
    "qemu_args",
)
MAX_MEMORY_MIB = 1 << 20  # 1 TiB; a plan also checks what this host has


def keys() -> tuple[str, ...]:
    """The base keys plus those device kinds own (gpu, vram: the vGPU's)."""
    return BASE_KEYS + tuple(k for kind in dev.DEVICES.kinds() for k in kind.profile_keys)


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    description: str = ""
    machine: str = "q35"
    accel: str = "auto"
    boot: str = "bios"
    memory_mib: int = 128
    cpus: int = 1
    cpu: str | None = None  # None: 'host' under KVM, QEMU's default under TCG
    acpi: bool = True  # QEMU's ACPI tables; the kernel does not use them
    iommu: bool = False  # QEMU's intel-iommu (DMA remapping): microkernel/iommu.c confines DMA
    # ... with interrupt remapping too: what Linux's vfio needs (an L1 guest, docs/passthrough.md)
    iommu_intremap: bool = False
    devices: tuple = ()
    qemu_args: tuple[str, ...] = field(default_factory=tuple)
    settings: dict = field(default_factory=dict, hash=False)  # device kind -> its keys

    @property
    def gpu(self) -> str:
        """none | virtual (the vGPU bridge, docs/vgpu.md)."""
        return self.settings.get("vgpu", {}).get("gpu", "none")

    @property
    def vram(self) -> int:
        return self.settings.get("vgpu", {}).get("vram", 0)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "description": self.description,
            "machine": self.machine,
            "accel": self.accel,
            "boot": self.boot,
            "memory_mib": self.memory_mib,
            "cpus": self.cpus,
            "cpu": self.cpu,
            "acpi": self.acpi,
            "iommu": self.iommu,
            "iommu_intremap": self.iommu_intremap,
            "devices": [repr(d) for d in self.devices],
            "gpu": self.gpu,
            "vram": self.vram,
            "qemu_args": list(self.qemu_args),
        }


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve(ref: str, relative_to: Path) -> Path | None:
    """A profile reference -> file: a name in qemu_configs/, or a path to a YAML file."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        # realpath, not resolve() (a symlink loop raises); anything that exists is
        # returned so the loader can say what is wrong with it (a FIFO, a directory).
        p = Path(os.path.realpath(relative_to / ref))
        return p if os.path.lexists(p) else None
    p = PROFILE_DIR / f"{ref}.yaml"
    return p if os.path.isfile(p) else None  # os.path: False (not OSError) for a 1 MB name


def unknown_profile_hint(ref: str) -> str:
    names = available()
    return (
        f"no profile {ref!r}{suggest(ref, names)}. Profiles are the files in "
        f"{PROFILE_DIR.relative_to(REPO)}/ ({', '.join(names)}) or a path to a "
        "profile YAML file."
    )


def load_profile(path: Path) -> Profile:
    problems = Problems(path)
    node = load(path, "profile")
    f = Fields(problems, node, "", keys(), 1)
    description = f.get("description", str, "")
    machine = f.choice("machine", MACHINES, "q35")
    accel = f.choice("accel", ACCELS, "auto")
    boot = f.choice("boot", BOOT_PATHS, "bios")
    mem_raw = f.raw("memory", 128)
    memory = mem_raw if isinstance(mem_raw, int) and not isinstance(mem_raw, bool) else None
    if memory is None:
        size = parse_size(mem_raw)
        memory = size >> 20 if size and size % (1 << 20) == 0 else None
    if memory is None or not 16 <= memory <= MAX_MEMORY_MIB:
        shown = repr(mem_raw) if len(repr(mem_raw)) <= 40 else repr(mem_raw)[:37] + "..."
        f.error(
            "memory",
            f"{shown} is not a usable memory size; write MiB as a number "
            "('memory: 128') or a size ('memory: 1G'), at least 16 MiB and at most 1 TiB.",
        )
    cpus = f.get("cpus", int, 1, example="cpus: 1")
    if cpus is not None and not 1 <= cpus <= 64:
        f.error("cpus", "must be between 1 and 64.")
    cpu = f.get("cpu", str, None, example="cpu: host")
    acpi = f.get("acpi", bool, True, example="acpi: false")
    iommu = f.get("iommu", bool, False, example="iommu: true")
    intremap = f.get("iommu_intremap", bool, False, example="iommu_intremap: true")
    ctx = dev.ParseContext(problems, path.parent, "profile")
    settings = {k.name: k.parse_profile(f, ctx) for k in dev.DEVICES.kinds() if k.profile_keys}
    qargs = f.get("qemu_args", list, [], example="qemu_args: ['-device', 'pvpanic']")
    if qargs and not all(isinstance(a, str) for a in qargs):
        f.error("qemu_args", "must be a list of strings, one QEMU argument each.")
    devices = dev.parse(problems, f.raw("devices"), "devices", path.parent, "profile")
    f.done()
    if machine == "pc" and iommu:
        problems.add(
            node.lines.get("iommu"),
            "iommu",
            "QEMU's intel-iommu exists only on q35; use machine: q35 or drop iommu.",
        )
    if intremap and not iommu:
        problems.add(
            node.lines.get("iommu_intremap"),
            "iommu_intremap",
            "interrupt remapping is a feature of the IOMMU; add 'iommu: true' or drop it.",
        )
    if intremap and accel != "tcg":
        problems.add(
            node.lines.get("iommu_intremap"),
            "iommu_intremap",
            "interrupt remapping needs accel: tcg here (under KVM QEMU 7.2 wants "
            "kernel-irqchip=split for it); set accel: tcg or drop iommu_intremap.",
        )
    if machine == "pc":
        for i, d in enumerate(devices):
            if d.behind_root_port:
                problems.add(
                    node.lines.get("devices"),
                    f"devices[{i}]",
                    "behind_root_port needs a PCIe machine; use machine: q35.",
                )
    problems.raise_if_any()
    return Profile(
        name=path.stem,
        path=path,
        description=description,
        machine=machine,
        accel=accel,
        boot=boot,
        memory_mib=memory,
        cpus=cpus,
        cpu=cpu,
        acpi=acpi,
        iommu=bool(iommu),
        iommu_intremap=bool(intremap),
        devices=tuple(devices),
        qemu_args=tuple(qargs or ()),
        settings=settings,
    )
