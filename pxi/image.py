"""Program images: decoded pixels + metadata, and their PNG form.

A PXI program is a PNG, RGBA8, row-major, pc = y * width + x.  The pixels alone are
enough to execute; metadata (format version, entry points, symbols, sections, source map,
default thread count and memory size) travels in PNG text chunks and serves the tools.
Anything else (RGB, 16-bit, palette, interlaced, truncated or corrupt files) is refused
with a message that says what was found and how to get a valid image.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .errors import ImageError
from .machine import MAX_PIXELS

FORMAT_VERSION = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
META_KEY = "pxi.meta"
SRCMAP_KEY = "pxi.srcmap"
_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


@dataclass(frozen=True)
class Section:
    name: str
    kind: str  # "code" | "data" | "matrix"
    start: int  # first pc
    end: int  # one past the last pc


@dataclass
class Meta:
    version: int = FORMAT_VERSION
    entries: dict[str, int] = field(default_factory=dict)
    symbols: dict[str, int] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    threads: int | None = None  # default thread count for `pxi run`
    memory: int | None = None  # default data memory size in bytes for `pxi run`
    # Source map: runs of (first pc, file index, line); files by index.
    src_files: list[str] = field(default_factory=list)
    src_runs: list[tuple[int, int, int]] = field(default_factory=list)

    def semantic(self) -> dict:
        """Everything but the source map (which names the file that was assembled)."""
        return {
            "version": self.version,
            "entries": self.entries,
            "symbols": self.symbols,
            "sections": [s.__dict__ for s in self.sections],
            "threads": self.threads,
            "memory": self.memory,
        }

    def source_of(self, pc: int) -> str | None:
        """'file:line' of the source statement that produced pixel pc, if known."""
        best = None
        for start, fi, line in self.src_runs:
            if start > pc:
                break
            best = (fi, line)
        if best is None or best[0] >= len(self.src_files):
            return None
        return f"{self.src_files[best[0]]}:{best[1]}"

    def section_at(self, pc: int) -> Section | None:
        for s in self.sections:
            if s.start <= pc < s.end:
                return s
        return None


@dataclass
class Program:
    """Decoded pixels (u32 per pixel, R in the low byte) + metadata."""

    pixels: np.ndarray
    width: int
    meta: Meta = field(default_factory=Meta)
    name: str = "<program>"

    def __post_init__(self) -> None:
        self.pixels = np.ascontiguousarray(self.pixels, dtype=np.uint32).reshape(-1)
        if self.width <= 0 or self.pixels.size % self.width:
            raise ValueError(f"{self.pixels.size} pixels do not fill rows of width {self.width}")

    @property
    def npix(self) -> int:
        return int(self.pixels.size)

    @property
    def height(self) -> int:
        return self.npix // self.width

    def xy(self, pc: int) -> tuple[int, int]:
        return pc % self.width, pc // self.width

    @property
    def entry(self) -> int:
        """Where threads start: the first entry point, else pc 0."""
        return next(iter(self.meta.entries.values()), 0)

    def rgba(self) -> np.ndarray:
        """The image as an (height, width, 4) uint8 array."""
        return self.pixels.astype("<u4").view(np.uint8).reshape(self.height, self.width, 4)

    def canonical_bytes(self) -> bytes:
        """What the program's identity hashes: width, height and the RGBA bytes."""
        head = b"PXI1" + struct.pack("<II", self.width, self.height)
        return head + self.pixels.astype("<u4").tobytes()

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


# --- PNG ------------------------------------------------------------------------------


def save_png(program: Program, path: str | Path | None = None) -> bytes:
    """Encode the program as a PNG (and write it to path if given); returns the bytes."""
    img = Image.fromarray(program.rgba(), "RGBA")
    info = PngImagePlugin.PngInfo()
    meta = program.meta
    info.add_text(META_KEY, json.dumps(meta.semantic(), sort_keys=True))
    if meta.src_runs:
        src = {"files": meta.src_files, "runs": meta.src_runs}
        info.add_text(SRCMAP_KEY, json.dumps(src), zip=True)
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def _walk_chunks(data: bytes, where: str) -> dict:
    """Check the chunk structure and CRCs; return IHDR fields."""
    fix = "re-create it with `pxi asm` (or save it again as an 8-bit RGBA PNG)"
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError(f"{where}: not a PNG file (bad signature); {fix}.")
    pos, ihdr, seen_end = 8, None, False
    while pos < len(data):
        if pos + 8 > len(data):
            raise ImageError(f"{where}: truncated PNG (chunk header cut at byte {pos}); {fix}.")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ImageError(
                f"{where}: truncated PNG ({ctype.decode('latin-1')} chunk at byte {pos} "
                f"needs {length} bytes, the file ends first); {fix}."
            )
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : end])
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            raise ImageError(
                f"{where}: corrupt PNG (CRC mismatch in the {ctype.decode('latin-1')} chunk "
                f"at byte {pos}); {fix}."
            )
        if ctype == b"IHDR":
            w, h, depth, ctype_, _comp, _filt, interlace = struct.unpack(">IIBBBBB", body)
            ihdr = dict(width=w, height=h, depth=depth, color=ctype_, interlace=interlace)
        if ctype == b"IEND":
            seen_end = True
            break
        pos = end
    if ihdr is None:
        raise ImageError(f"{where}: corrupt PNG (no IHDR chunk); {fix}.")
    if not seen_end:
        raise ImageError(f"{where}: truncated PNG (no IEND chunk); {fix}.")
    return ihdr


def load_png(source: str | Path | bytes, name: str | None = None) -> Program:
    """Decode a program image, refusing anything that is not 8-bit RGBA."""
    if isinstance(source, bytes):
        data, where = source, name or "<bytes>"
    else:
        where = name or str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise ImageError(f"{where}: cannot read the image ({e.strerror}).") from None
    h = _walk_chunks(data, where)
    if h["color"] != 6 or h["depth"] != 8:
        found = f"{h['depth']}-bit {_COLOR_TYPES.get(h['color'], 'unknown colour type')}"
        raise ImageError(
            f"{where}: PXI images are 8-bit RGBA, this one is {found}; every pixel must "
            f"carry 4 bytes (opcode + 3 operands). Convert it, e.g. with Pillow "
            f"`Image.open(p).convert('RGBA').save(p)`, or re-assemble it with `pxi asm`."
        )
    if h["interlace"]:
        raise ImageError(
            f"{where}: interlaced PNGs are not PXI images; save it without interlacing."
        )
    if h["width"] * h["height"] > MAX_PIXELS:
        raise ImageError(
            f"{where}: {h['width']}x{h['height']} pixels exceed the PXI limit of {MAX_PIXELS}."
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgba = np.asarray(img, dtype=np.uint8)
            text = dict(getattr(img, "text", {}) or {})
    except Exception as e:  # Pillow/zlib raise assorted types for a broken IDAT stream
        raise ImageError(
            f"{where}: corrupt PNG image data ({e}); re-create it with `pxi asm`."
        ) from None
    if rgba.shape != (h["height"], h["width"], 4):
        raise ImageError(f"{where}: decoded to shape {rgba.shape}, expected RGBA; re-create it.")
    pixels = np.ascontiguousarray(rgba).reshape(-1, 4).view("<u4").reshape(-1).astype(np.uint32)
    return Program(pixels, h["width"], _parse_meta(text, where), name=where)


def _parse_meta(text: dict, where: str) -> Meta:
    meta = Meta()
    raw = text.get(META_KEY)
    if raw is None:
        return meta  # pixels alone are a valid program
    try:
        d = json.loads(raw)
        meta.version = int(d.get("version", FORMAT_VERSION))
        meta.entries = {str(k): int(v) for k, v in d.get("entries", {}).items()}
        meta.symbols = {str(k): int(v) for k, v in d.get("symbols", {}).items()}
        meta.sections = [Section(**s) for s in d.get("sections", [])]
        meta.threads = d.get("threads")
        meta.memory = d.get("memory")
    except (ValueError, TypeError, AttributeError) as e:
        raise ImageError(
            f"{where}: the {META_KEY} text chunk is not valid PXI metadata ({e}); "
            f"re-assemble the program with `pxi asm`."
        ) from None
    if meta.version != FORMAT_VERSION:
        raise ImageError(
            f"{where}: PXI format version {meta.version}, this pxi reads version "
            f"{FORMAT_VERSION}; re-assemble the source with this pxi."
        )
    src = text.get(SRCMAP_KEY)
    if src:
        try:
            s = json.loads(src)
            meta.src_files = [str(f) for f in s["files"]]
            meta.src_runs = [tuple(int(x) for x in r) for r in s["runs"]]
        except (ValueError, TypeError, KeyError):
            meta.src_files, meta.src_runs = [], []  # a source map is a convenience only
    return meta
