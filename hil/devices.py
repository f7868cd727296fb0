"""Devices a machine can carry: their YAML form, their QEMU arguments, their PCI identity.

A device is written the same way in a profile (default devices) and in a scenario:

    devices:
      - nvme: {size: 64M, fill: lba}       # a disk created for this run
      - nvme: {file: disks/fs.img}         # copy-on-write over a file, never modified
      - nic: {model: e1000}                # user networking, traffic kept as a pcap
      - usb: {keyboard: true, storage: 8M} # qemu-xhci + usb-kbd + usb-storage
      - display: {model: std}              # a display-class PCI function

``parse`` turns YAML into frozen specs (validated, with file:line errors); ``attach``
turns a spec into QEMU arguments plus the per-run files it needs (created in the run
directory, so parallel runs never share one).  ``pci_ids`` says which PCI functions a
spec puts on the bus, so scenarios and tests can check the guest saw them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import InfraError
from .yamlsrc import Fields, LDict, Problems, parse_size, suggest


@dataclass(frozen=True)
class PciId:
    vendor: int
    device: int
    class_code: int  # 24-bit: base class, subclass, prog-if

    def __str__(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x} {self.class_code:06x}"


@dataclass(frozen=True)
class Nvme:
    size: int | None = None  # bytes of a fresh disk
    fill: str = "zero"  # zero | lba | 0xNN
    file: Path | None = None  # or a copy-on-write overlay over this file
    serial: str = ""
    behind_root_port: bool = False
    kind = "nvme"


@dataclass(frozen=True)
class Nic:
    model: str = "e1000"
    behind_root_port: bool = False
    kind = "nic"


@dataclass(frozen=True)
class Usb:
    keyboard: bool = True
    storage: int | None = None  # bytes of a usb-storage disk, None for none
    behind_root_port: bool = False
    kind = "usb"


@dataclass(frozen=True)
class Display:
    model: str = "std"
    behind_root_port: bool = False
    kind = "display"


Device = Nvme | Nic | Usb | Display

NIC_MODELS = {  # model -> (QEMU device, PCI identity)
    "e1000": ("e1000", PciId(0x8086, 0x100E, 0x020000)),
    "virtio-net": ("virtio-net-pci", PciId(0x1AF4, 0x1000, 0x020000)),
}
DISPLAY_MODELS = {
    "std": ("VGA", PciId(0x1234, 0x1111, 0x030000)),
    "bochs": ("bochs-display", PciId(0x1234, 0x1111, 0x038000)),
}
NVME_ID = PciId(0x1B36, 0x0010, 0x010802)
XHCI_ID = PciId(0x1B36, 0x000D, 0x0C0330)
KINDS = ("nvme", "nic", "usb", "display")


def pci_ids(dev: Device) -> list[PciId]:
    """The PCI functions this device adds (root ports not counted)."""
    match dev:
        case Nvme():
            return [NVME_ID]
        case Nic(model=m):
            return [NIC_MODELS[m][1]]
        case Usb():
            return [XHCI_ID]
        case Display(model=m):
            return [DISPLAY_MODELS[m][1]]
    raise AssertionError(dev)


# ---------------------------------------------------------------- parsing


def parse(problems: Problems, node, where: str, base_dir: Path) -> list[Device]:
    """A ``devices:`` list -> specs. ``base_dir`` resolves relative ``file:`` paths."""
    if node is None:
        return []
    if not isinstance(node, list):
        problems.add(
            getattr(node, "line", None),
            where,
            "expected a list of devices, e.g. '- nvme: {size: 64M}'.",
        )
        return []
    out: list[Device] = []
    for i, item in enumerate(node):
        line = node.lines[i] if hasattr(node, "lines") else None
        here = f"{where}[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            problems.add(
                line,
                here,
                "each device is a one-key mapping naming its kind "
                f"({', '.join(KINDS)}), e.g. '- nic: {{model: e1000}}'.",
            )
            continue
        ((kind, body),) = item.items()
        if kind not in KINDS:
            problems.add(
                line,
                here,
                f"unknown device kind {kind!r}{suggest(kind, KINDS)}; "
                f"known kinds: {', '.join(KINDS)}.",
            )
            continue
        if body is None:
            body = LDict()
            body.line, body.lines = line, {}
        dev = _PARSERS[kind](problems, body, f"{here}.{kind}", base_dir, line)
        if dev is not None:
            out.append(dev)
    return out


def _nvme(problems: Problems, body, where: str, base_dir: Path, line) -> Nvme | None:
    f = Fields(problems, body, where, ["size", "fill", "file", "serial", "behind_root_port"], line)
    size_raw = f.raw("size")
    file_raw = f.get("file", str, None, example="file: disks/test.img")
    fill = f.get("fill", (str, int), "zero", example="fill: lba")
    serial = f.get("serial", str, "", example="serial: PXNVME0")
    brp = f.get("behind_root_port", bool, False)
    f.done()
    if not f.ok:
        return None
    size = None
    if file_raw is not None:
        if size_raw is not None or f.has("fill"):
            f.error(
                "file",
                "give either 'file' (an existing disk) or 'size'/'fill' (a fresh disk), not both.",
            )
            return None
        path = (base_dir / file_raw).resolve()
        if not path.is_file():
            f.error(
                "file",
                f"{path} does not exist. Fix the path (relative paths are "
                "relative to the YAML file).",
            )
            return None
        return Nvme(file=path, serial=serial, behind_root_port=brp)
    size = parse_size(size_raw if size_raw is not None else "16M")
    if size is None:
        f.error("size", f"{size_raw!r} is not a size; write e.g. 'size: 64M' (K, M, G suffixes).")
        return None
    if size % 512:
        f.error("size", "must be a multiple of 512 bytes (the sector size).")
        return None
    if isinstance(fill, int):
        fill = f"0x{fill:02x}" if 0 <= fill <= 255 else None
    elif fill not in ("zero", "lba"):
        try:
            value = int(fill, 0)
        except ValueError:
            value = -1
        fill = f"0x{value:02x}" if 0 <= value <= 255 else None
    if fill is None:
        f.error(
            "fill",
            "must be 'zero', 'lba' (every 512-byte sector holds its LBA) "
            "or a byte value such as 0xA5.",
        )
        return None
    return Nvme(size=size, fill=fill, serial=serial, behind_root_port=brp)


def _nic(problems: Problems, body, where: str, base_dir: Path, line) -> Nic | None:
    f = Fields(problems, body, where, ["model", "behind_root_port"], line)
    model = f.choice("model", NIC_MODELS, "e1000")
    brp = f.get("behind_root_port", bool, False)
    f.done()
    return Nic(model=model, behind_root_port=brp) if f.ok and model else None


def _usb(problems: Problems, body, where: str, base_dir: Path, line) -> Usb | None:
    f = Fields(problems, body, where, ["keyboard", "storage", "behind_root_port"], line)
    kbd = f.get("keyboard", bool, True)
    storage_raw = f.raw("storage")
    brp = f.get("behind_root_port", bool, False)
    f.done()
    storage = None
    if storage_raw is not None:
        storage = parse_size(storage_raw)
        if storage is None or storage % 512:
            f.error(
                "storage",
                f"{storage_raw!r} is not a disk size; write e.g. "
                "'storage: 8M' (a multiple of 512 bytes).",
            )
            return None
    return Usb(keyboard=kbd, storage=storage, behind_root_port=brp) if f.ok else None


def _display(problems: Problems, body, where: str, base_dir: Path, line) -> Display | None:
    f = Fields(problems, body, where, ["model", "behind_root_port"], line)
    model = f.choice("model", DISPLAY_MODELS, "std")
    brp = f.get("behind_root_port", bool, False)
    f.done()
    return Display(model=model, behind_root_port=brp) if f.ok and model else None


_PARSERS = {"nvme": _nvme, "nic": _nic, "usb": _usb, "display": _display}


# ---------------------------------------------------------------- attaching


@dataclass
class Attachment:
    args: list[str]
    files: dict[str, Path]  # artifact name -> path in the run dir (disks, pcaps)


def attach(devices: list[Device], workdir: Path) -> Attachment:
    """QEMU arguments for ``devices``; per-run disks and pcaps are created in ``workdir``."""
    args: list[str] = []
    files: dict[str, Path] = {}
    counters: dict[str, int] = {}
    for port, dev in enumerate(devices):
        n = counters.get(dev.kind, 0)
        counters[dev.kind] = n + 1
        name = f"{dev.kind}{n}"
        bus = ""
        if dev.behind_root_port:
            rp = f"rp{port}"
            args += ["-device", f"pcie-root-port,id={rp},chassis={port + 1},slot={port + 1}"]
            bus = f",bus={rp}"
        match dev:
            case Nvme():
                disk = _nvme_disk(dev, workdir / f"{name}.img")
                files[f"{name}.disk"] = disk
                fmt = "qcow2" if dev.file else "raw"
                serial = dev.serial or f"PXNVME{n}"
                args += [
                    "-drive",
                    f"file={disk},if=none,id={name},format={fmt}",
                    "-device",
                    f"nvme,serial={serial},drive={name}{bus}",
                ]
            case Nic(model=m):
                pcap = workdir / f"{name}.pcap"
                files[f"{name}.pcap"] = pcap
                args += [
                    "-netdev",
                    f"user,id={name}",
                    "-device",
                    f"{NIC_MODELS[m][0]},netdev={name}{bus}",
                    "-object",
                    f"filter-dump,id={name}dump,netdev={name},file={pcap}",
                ]
            case Usb():
                args += ["-device", f"qemu-xhci,id={name}{bus}"]
                if dev.keyboard:
                    args += ["-device", f"usb-kbd,bus={name}.0"]
                if dev.storage:
                    disk = workdir / f"{name}-storage.img"
                    _fresh_disk(disk, dev.storage, "zero")
                    files[f"{name}.disk"] = disk
                    args += [
                        "-drive",
                        f"file={disk},if=none,id={name}disk,format=raw",
                        "-device",
                        f"usb-storage,bus={name}.0,drive={name}disk",
                    ]
            case Display(model=m):
                args += ["-device", f"{DISPLAY_MODELS[m][0]}{bus}"]
    return Attachment(args, files)


def _nvme_disk(dev: Nvme, path: Path) -> Path:
    if dev.file is None:
        _fresh_disk(path, dev.size, dev.fill)
        return path
    # A qcow2 overlay: the guest's writes land in the run directory, the source file
    # is only ever opened read-only by QEMU (as the backing file).
    overlay = path.with_suffix(".qcow2")
    fmt = _image_format(dev.file)
    _qemu_img(["create", "-q", "-f", "qcow2", "-b", str(dev.file), "-F", fmt, str(overlay)])
    return overlay


def _fresh_disk(path: Path, size: int, fill: str) -> None:
    with path.open("wb") as f:
        if fill == "zero":
            f.truncate(size)  # sparse: costs nothing on disk
            return
        if fill == "lba":
            import numpy as np

            sectors_per_chunk = 2048  # 1 MiB
            for first in range(0, size // 512, sectors_per_chunk):
                count = min(sectors_per_chunk, size // 512 - first)
                lba = np.arange(first, first + count, dtype="<u8")
                f.write(np.repeat(lba, 64).tobytes())  # 64 x 8 bytes = one sector
            return
        chunk = bytes([int(fill, 16)]) * (1 << 20)
        left = size
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


def _image_format(path: Path) -> str:
    out = _qemu_img(["info", "--output=json", str(path)])
    return json.loads(out)["format"]


def _qemu_img(args: list[str]) -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise InfraError(
            "qemu-img is not installed; it creates the copy-on-write disk "
            "overlays. Install the Debian package qemu-utils."
        )
    p = subprocess.run([exe, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise InfraError(f"qemu-img {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout
