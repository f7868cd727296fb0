"""A content-addressed store of pixel programs.

A program's id is the sha256 of its canonical pixels (``Program.canonical_bytes``:
width, height, RGBA bytes), so the same pixels always get the same id whatever metadata
or PNG encoding they came with.  Programs are stored as segments: every quantized matrix
section is its own blob and the pixels between matrices form the others, each blob named
by the sha256 of its bytes -- so a matrix shared by several programs is stored once.

    <root>/blobs/<sha256>          zlib-compressed pixel bytes
    <root>/programs/<id>.json      width, height, metadata, segments [[start, end, blob]]
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from .errors import PxiError
from .image import Program, _parse_meta


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _segments(self, prog: Program) -> list[tuple[int, int]]:
        cuts = {0, prog.npix}
        for s in prog.meta.sections:
            if s.kind == "matrix":
                cuts |= {s.start, min(s.end, prog.npix)}
        edges = sorted(cuts)
        return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]

    def add(self, prog: Program) -> tuple[str, int]:
        """Store prog; returns its id and how many blobs were new."""
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "programs").mkdir(parents=True, exist_ok=True)
        segs, new = [], 0
        for a, b in self._segments(prog):
            raw = prog.pixels[a:b].astype("<u4").tobytes()
            digest = hashlib.sha256(raw).hexdigest()
            path = self.root / "blobs" / digest
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(zlib.compress(raw, 6))
                tmp.replace(path)  # atomic: a reader never sees half a blob
                new += 1
            segs.append([a, b, digest])
        pid = prog.sha256()
        manifest = {
            "id": pid,
            "name": Path(prog.name).name,
            "width": prog.width,
            "height": prog.height,
            "meta": prog.meta.semantic(),
            "segments": segs,
        }
        (self.root / "programs" / f"{pid}.json").write_text(json.dumps(manifest, indent=1))
        return pid, new

    def _resolve(self, prefix: str) -> Path:
        d = self.root / "programs"
        hits = sorted(d.glob(f"{prefix}*.json")) if prefix and d.is_dir() else []
        if not hits:
            raise PxiError(
                f"no program with id {prefix!r} in the store at {self.root}; `pxi store ls` lists them."
            )
        if len(hits) > 1:
            raise PxiError(
                f"id prefix {prefix!r} is ambiguous ({len(hits)} programs); give more digits."
            )
        return hits[0]

    def get(self, prefix: str) -> Program:
        m = json.loads(self._resolve(prefix).read_text())
        pixels = np.zeros(m["width"] * m["height"], np.uint32)
        for a, b, digest in m["segments"]:
            try:
                raw = zlib.decompress((self.root / "blobs" / digest).read_bytes())
            except (OSError, zlib.error) as e:
                raise PxiError(
                    f"store blob {digest[:16]} of program {m['id'][:16]} is missing or corrupt ({e})."
                ) from None
            if hashlib.sha256(raw).hexdigest() != digest:
                raise PxiError(
                    f"store blob {digest[:16]} does not match its hash; the store is corrupt."
                )
            pixels[a:b] = np.frombuffer(raw, "<u4")
        meta = _parse_meta({"pxi.meta": json.dumps(m["meta"])}, str(self.root))
        prog = Program(pixels, m["width"], meta, name=m.get("name", m["id"]))
        if prog.sha256() != m["id"]:
            raise PxiError(
                f"program {m['id'][:16]} reassembles to different pixels; the store is corrupt."
            )
        return prog

    def ls(self) -> list[tuple[str, str]]:
        d = self.root / "programs"
        out = []
        for p in sorted(d.glob("*.json")) if d.is_dir() else []:
            m = json.loads(p.read_text())
            nmat = sum(1 for s in m["meta"].get("sections", []) if s["kind"] == "matrix")
            out.append(
                (
                    m["id"],
                    f"{m['width']}x{m['height']} {m.get('name', '')} ({len(m['segments'])} segments, {nmat} matrices)",
                )
            )
        return out
