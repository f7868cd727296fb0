"""The program a vGPU scenario runs, as the payload carried by the boot image.

A scenario names a pixel program (``.pxs`` source or ``.png`` image).  At plan time it
is assembled/decoded here on the host and encoded as a PXIP payload (header + raw
pixels, layout.PAYLOAD): the microkernel only copies it into VRAM, it never parses PNG.
Payloads are cached by content, so the image (whose key hashes the payload) is rebuilt
only when the program changes -- the kernel binary itself stays the same.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import layout as L

DEFAULT_MEMORY = 64 * 1024  # data memory for programs that do not ask for a size


def load_program(path: Path, defines: dict[str, int] | None = None):
    """A pxi Program from .pxs (assembled with `defines` predefined: the scenario's
    parameters, docs/pxi.md) or .png; mistakes are UserErrors."""
    from pxi.errors import PxiError

    try:
        if path.suffix == ".pxs":
            from pxi.asm import assemble_file

            return assemble_file(path, defines)
        if defines:
            raise UserError(
                f"GPU program {path}: defines {sorted(defines)} need a .pxs source "
                "(a .png program is already assembled)."
            )
        if path.suffix == ".png":
            from pxi.image import load_png

            return load_png(path)
    except PxiError as e:
        raise UserError(f"GPU program {path}: {e}") from None
    except OSError as e:
        raise UserError(f"GPU program {path}: cannot read it ({e.strerror})") from None
    raise UserError(f"GPU program {path}: expected a .pxs source or a .png program image.")


def encode(program, threads: int | None = None, memory: int | None = None) -> bytes:
    header = bytearray(L.PAYLOAD.size)
    values = {
        "magic": L.PAYLOAD_MAGIC,
        "version": L.PAYLOAD_VERSION,
        "width": program.width,
        "pixels": program.npix,
        "entry": program.entry,
        "threads": threads or program.meta.threads or 1,
        "memory": memory or program.meta.memory or DEFAULT_MEMORY,
    }
    for name, value in values.items():
        L.PAYLOAD.put(header, 0, name, value)
    return bytes(header) + program.pixels.astype("<u4").tobytes()


def decode_header(data: bytes) -> dict[str, int]:
    return L.PAYLOAD.read(data, 0)


def cached_payload(data: bytes, cache_root: Path | None = None) -> Path:
    """Write the payload once under the cache, named by its hash; return the path."""
    root = cache_root or Path(
        os.environ.get("PXOS_HIL_CACHE") or Path.home() / ".cache" / "pxos-hil" / "images"
    )
    d = root.parent / "payloads" if root.name == "images" else root / "payloads"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{hashlib.sha256(data).hexdigest()[:24]}.pxip"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def pixels_of(data: bytes) -> np.ndarray:
    h = decode_header(data)
    return np.frombuffer(data, dtype="<u4", count=h["pixels"], offset=L.PAYLOAD.size)
