"""Decoding pixels back into instructions, and the disassembler (Program -> .pxs).

``decode`` is also what fault messages and ``respond`` use to read an instruction, so a
pixel means the same thing everywhere.  The disassembler's output assembles back to the
same pixels, entries, symbols and sections (docs/pxi.md, "Round trip"): code sections
become instructions (a pixel that does not decode becomes `.word`), data sections `.hex`
lines and matrices `.qmatrix` + `.hex`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .image import Program
from .matrix import read_header
from .opcodes import BY_CHAR, IMM32, REG, SIMM8, SIMM16, TARGET, UIMM5, WIDTH, Opcode


@dataclass(frozen=True)
class Decoded:
    op: Opcode
    pc: int
    values: tuple[int, ...]  # operand values in assembly order (immediates signed)

    def field(self, name: str) -> int:
        for operand, v in zip(self.op.operands, self.values, strict=True):
            if operand.name == name:
                return v
        raise KeyError(name)

    def text(self, symbols: dict[int, str] | None = None) -> str:
        parts = []
        for operand, v in zip(self.op.operands, self.values, strict=True):
            if operand.kind == REG:
                parts.append(f"r{v}")
            elif operand.kind == TARGET:
                parts.append(symbols.get(v, str(v)) if symbols else str(v))
            elif operand.kind == IMM32:
                parts.append(f"0x{v:x}" if v > 9 else str(v))
            else:
                parts.append(str(v))
        return f"{self.op.mnemonic} {', '.join(parts)}".strip()


def _sext(v: int, bits: int) -> int:
    return v - (1 << bits) if v & (1 << (bits - 1)) else v


def decode(pixels: np.ndarray, pc: int) -> Decoded | None:
    """The instruction at pc, or None if the pixel(s) are not a valid encoding."""
    if pc >= pixels.size:
        return None
    w = int(pixels[pc])
    op = BY_CHAR.get(w & 0xFF)
    if op is None or w & op.mz:
        return None
    ext = 0
    if op.length == 2:
        if pc + 1 >= pixels.size:
            return None
        ext = int(pixels[pc + 1])
        if ext & op.ext_mz:
            return None
    fields = {
        "G": (w >> 8) & 0xFF,
        "B": (w >> 16) & 0xFF,
        "A": w >> 24,
        "BA": w >> 16,
        "X": ext,
        "XR": ext & 0xFF,
    }
    values = []
    for operand in op.operands:
        v = fields[operand.field]
        if operand.kind == SIMM8:
            v = _sext(v, 8)
        elif operand.kind == SIMM16:
            v = _sext(v, 16)
        elif operand.kind == WIDTH and v not in op.widths:
            return None
        elif operand.kind in (REG, UIMM5, IMM32, TARGET):
            pass
        values.append(v)
    d = Decoded(op, pc, tuple(values))
    if op.mnemonic in ("mrd", "mwr"):  # register pairs
        width = d.field("width")
        addr = d.field("ra")
        val = d.field("rd") if op.mnemonic == "mrd" else d.field("rv")
        if addr > 14 or (width == 64 and val > 14):
            return None
    return d


def describe(pixels: np.ndarray, pc: int) -> str:
    """The instruction at pc as text, or a description of the raw pixel."""
    d = decode(pixels, pc)
    if d is not None:
        return d.text()
    if pc >= pixels.size:
        return "(outside the image)"
    w = int(pixels[pc])
    r = w & 0xFF
    ch = repr(chr(r)) if 0x20 <= r < 0x7F else f"0x{r:02x}"
    return f"(pixel 0x{w:08x}, R={ch})"


# --- the disassembler ------------------------------------------------------------------


def disassemble(program: Program) -> str:
    px = program.pixels
    meta = program.meta
    labels: dict[int, list[str]] = {}
    for name, pc in sorted(meta.symbols.items(), key=lambda kv: (kv[1], kv[0])):
        labels.setdefault(pc, []).append(name)
    first_label = {pc: names[0] for pc, names in labels.items()}
    out = [
        f"; disassembled by pxi from {program.name}",
        f"; {program.width}x{program.height} pixels, sha256 {program.sha256()}",
        f".width {program.width}",
    ]
    if meta.threads is not None:
        out.append(f".threads {meta.threads}")
    if meta.memory is not None:
        out.append(f".memory {meta.memory}")
    for name, pc in meta.entries.items():
        out.append(f".entry {name if meta.symbols.get(name) == pc else pc}")

    end = _content_end(program)
    sections = meta.sections or [_Sec("code", 0, end)]
    pc = 0
    for sec in sections:
        if sec.start > pc:  # a gap no section covers: keep it as raw words
            out += _raw(px, pc, sec.start, labels)
        pc = sec.start
        sec_end = min(sec.end, px.size)
        if sec.kind == "matrix":
            lines = _matrix(px, pc, sec_end)
            if lines is not None:
                out += _emit_labels(labels, pc) + lines
                pc = sec_end
                continue
        if sec.kind in ("data", "matrix"):
            out += _hex(px, pc, sec_end, labels)
            pc = sec_end
            continue
        while pc < sec_end:
            out += _emit_labels(labels, pc)
            d = decode(px, pc)
            xy = f"({pc % program.width},{pc // program.width})"
            if d is None or pc + d.op.length > sec_end or (d.op.length == 2 and pc + 1 in labels):
                out.append(f"    .word 0x{int(px[pc]):08x}".ljust(40) + f"; pc {pc} {xy}")
                pc += 1
            else:
                out.append(f"    {d.text(first_label)}".ljust(40) + f"; pc {pc} {xy}")
                pc += d.op.length
    if pc < end:
        out += _raw(px, pc, end, labels)
        pc = end
    out += _emit_labels(labels, pc)
    # The assembler pads the last row with zero pixels; keep any longer zero tail.
    if -(-max(pc, 1) // program.width) * program.width != px.size:
        out.append(f"    .zero {px.size - pc}")
    return "\n".join(out) + "\n"


@dataclass
class _Sec:
    kind: str
    start: int
    end: int


def _content_end(program: Program) -> int:
    """One past the last non-zero pixel, or past the last section/symbol."""
    nz = np.flatnonzero(program.pixels)
    end = int(nz[-1]) + 1 if nz.size else 0
    for s in program.meta.sections:
        end = max(end, s.end)
    return min(end, program.npix)


def _emit_labels(labels: dict[int, list[str]], pc: int) -> list[str]:
    return [f"{name}:" for name in labels.get(pc, [])]


def _raw(px: np.ndarray, start: int, end: int, labels) -> list[str]:
    out = []
    for pc in range(start, end):
        out += _emit_labels(labels, pc)
        out.append(f"    .word 0x{int(px[pc]):08x}")
    return out


def _hex(px: np.ndarray, start: int, end: int, labels) -> list[str]:
    """Data pixels as .hex lines of up to 16 pixels, broken at labels."""
    out = []
    pc = start
    while pc < end:
        out += _emit_labels(labels, pc)
        stop = min(end, pc + 16)
        for q in range(pc + 1, stop):
            if q in labels:
                stop = q
                break
        raw = px[pc:stop].astype("<u4").tobytes()
        text = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'";\\' else "." for b in raw)
        out.append(f'    .hex "{raw.hex()}"'.ljust(44) + f"; {text}")
        pc = stop
    return out


def _matrix(px: np.ndarray, start: int, end: int) -> list[str] | None:
    problem, h = read_header(px, start)
    if problem is not None or h.end_pc != end:
        return None
    n = h.rows * h.cols
    data = px[start + 5 : end].astype("<u4").tobytes()
    if any(data[n:]):  # non-zero padding cannot be reproduced by .qmatrix
        return None
    sb, ob = int(px[start + 3]), int(px[start + 4])
    out = [
        f"    .qmatrix {h.rows}, {h.cols}, 0x{sb:08x}, 0x{ob:08x}".ljust(44)
        + f"; scale={float(h.scale)!r} offset={float(h.offset)!r}"
    ]
    for i in range(0, n, 64):
        out.append(f'    .hex "{data[i : min(n, i + 64)].hex()}"')
    return out
