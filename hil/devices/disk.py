"""Per-run disk images, shared by the kinds that carry a disk (nvme, usb storage).

A fresh disk is created in the run directory for every run; a user's file is never opened
for writing: the guest writes into a qcow2 overlay in the run directory, QEMU opens the
file itself read-only as the overlay's backing file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from ..errors import InfraError, UserError
from ..yamlsrc import Fields, parse_size

MAX_SIZE = 64 << 30  # a fresh disk; zero-filled ones are sparse, the others are written
MAX_FILLED = 4 << 30  # a disk whose every byte is written at the start of each run
FILLS = (
    "'zero', 'lba' (every 512-byte sector holds its LBA), a byte value such as 0xA5, or "
    "{random: SEED} (a seeded pseudo-random pattern, hil/blockpattern.py)"
)


def parse_fresh(f: Fields, size_key: str, fill_key: str | None, default: str) -> tuple:
    """(size, fill) of a fresh disk from keys ``size_key``/``fill_key``; (None, None) on error."""
    raw = f.raw(size_key, default)
    size = parse_size(raw)
    if size is None:
        f.error(
            size_key,
            f"{_short(raw)} is not a size; write e.g. '{size_key}: 64M' (K, M, G suffixes).",
        )
        return None, None
    if size % 512:
        f.error(size_key, "must be a multiple of 512 bytes (the sector size).")
        return None, None
    fill = "zero"
    if fill_key is not None:
        fill = _fill(f.raw(fill_key, "zero"))
        if fill is None:
            f.error(fill_key, f"must be {FILLS}.")
            return None, None
    limit = MAX_SIZE if fill == "zero" else MAX_FILLED
    if size > limit:
        f.error(
            size_key,
            f"{_short(raw)} is larger than the {limit >> 30} GiB a per-run disk may have "
            f"({'sparse, ' if fill == 'zero' else 'written in full at every run, '}in the "
            "results directory). Use a smaller size.",
        )
        return None, None
    return size, fill


def _fill(raw) -> str | None:
    if isinstance(raw, dict):
        seed = raw.get("random") if list(raw) == ["random"] else None
        ok = isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 1 << 32
        return f"random:{seed}" if ok else None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return f"0x{raw:02x}" if 0 <= raw <= 255 else None
    if raw in ("zero", "lba"):
        return raw
    try:
        value = int(str(raw), 0)
    except ValueError:
        return None
    return f"0x{value:02x}" if 0 <= value <= 255 else None


def _short(raw) -> str:
    s = repr(raw)
    return s if len(s) <= 40 else s[:37] + "..."


def image_format(path: Path) -> str:
    """The format of a user's disk file, its whole backing chain checked (UserError)."""
    out = qemu_img(["info", "--output=json", "--backing-chain", str(path)], user_file=path)
    chain = json.loads(out)
    return chain[0]["format"]


def content(fill: str):
    """The disk as created: a function (offset, length) -> bytes, both whole sectors;
    None for zeros.  One definition for creating a disk and for checking it afterwards."""
    import numpy as np

    if fill == "zero":
        return None
    if fill == "lba":

        def lba(offset: int, length: int) -> bytes:
            first = offset // 512
            ids = np.arange(first, first + length // 512, dtype="<u8")
            return np.repeat(ids, 64).tobytes()  # 64 x 8 bytes = one sector

        return lba
    if fill.startswith("random:"):
        import functools

        from ..blockpattern import random_fill

        return functools.partial(random_fill, int(fill.split(":", 1)[1]))
    byte = int(fill, 16)
    return lambda offset, length: bytes([byte]) * length


def fresh(path: Path, size: int, fill: str) -> None:
    free = shutil.disk_usage(path.parent).free
    if fill != "zero" and size > free:
        raise InfraError(
            f"no room for a {size >> 20} MiB disk in {path.parent} ({free >> 20} MiB free)"
        )
    try:
        with path.open("wb") as f:
            make = content(fill)
            if make is None:
                f.truncate(size)  # sparse: costs nothing on disk
                return
            chunk = 1 << 20
            for offset in range(0, size, chunk):
                f.write(make(offset, min(chunk, size - offset)))
    except OSError as e:
        path.unlink(missing_ok=True)
        raise InfraError(f"cannot create the disk {path}: {e.strerror}") from None


def overlay(source: Path, path: Path) -> Path:
    """A qcow2 overlay at ``path`` over ``source`` (opened read-only, as backing file)."""
    fmt = image_format(source)
    qemu_img(["create", "-q", "-f", "qcow2", "-b", str(source), "-F", fmt, str(path)])
    return path


def qemu_img(args: list[str], user_file: Path | None = None) -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise InfraError(
            "qemu-img is not installed; it inspects disk files and creates the "
            "copy-on-write overlays. Install the Debian package qemu-utils."
        )
    try:
        p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise InfraError(f"qemu-img {args[0]} did not finish within 60 s") from None
    if p.returncode != 0:
        msg = p.stderr.strip().splitlines()[-1][:300] if p.stderr.strip() else "no message"
        if user_file is not None:
            raise UserError(f"{user_file}: qemu-img cannot use this disk file: {msg}")
        raise InfraError(f"qemu-img {args[0]} failed: {msg}")
    return p.stdout
