"""The opcode table, PNG program images, the assembler and the disassembler."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pxi_util import PROGRAMS, REPO, asm

from pxi.asm import assemble_file, assemble_text
from pxi.disasm import decode, disassemble
from pxi.doctable import check_doc
from pxi.errors import AsmError, ImageError
from pxi.image import load_png, save_png
from pxi.opcodes import BY_MNEMONIC, OPCODES
from pxi.wgslgen import constants, render

SHIPPED = ["hello.pxs", "checksum.pxs", "charmodel/charmodel.pxs"]


def test_table_drives_wgsl_constants():
    text = constants()
    for op in OPCODES:
        assert f"const OP_{op.mnemonic.upper()}: u32 = {op.code}u;" in text
        assert f"const MZ_{op.mnemonic.upper()}: u32 = 0x{op.mz:08x}u;" in text
    render("interp.wgsl", PROFILE_HOOK="")  # every opcode has a case label


def test_opcodes_are_printable_and_masks_cover_unused_fields():
    assert BY_MNEMONIC["halt"].mz == 0xFFFFFF00
    assert BY_MNEMONIC["add"].mz == 0xF0F0F000  # high nibbles of the three register fields
    assert BY_MNEMONIC["shli"].mz == 0xE0F0F000  # shift amount 0..31
    assert BY_MNEMONIC["li"].mz == 0x0000F000
    assert BY_MNEMONIC["matmul"].length == 2 and BY_MNEMONIC["matmul"].ext_mz == 0xFFFFFFF0
    assert all(0x21 <= op.code <= 0x7E for op in OPCODES)


def test_doc_table_is_current():
    assert check_doc(REPO / "docs" / "pxi.md") is None


@pytest.mark.parametrize("name", SHIPPED)
def test_round_trip_shipped(name, tmp_path):
    """asm -> png -> disasm -> asm: identical pixels, entries, symbols, sections; the
    disassembly of the re-assembled image is identical text."""
    p1 = assemble_file(PROGRAMS / name)
    png = tmp_path / "a.png"
    save_png(p1, png)
    loaded = load_png(png)
    assert np.array_equal(loaded.pixels, p1.pixels) and loaded.meta.semantic() == p1.meta.semantic()
    text = disassemble(loaded)
    p2 = assemble_text(text, "re.pxs")
    assert np.array_equal(p2.pixels, p1.pixels)
    assert p2.width == p1.width
    assert p2.meta.semantic() == p1.meta.semantic()
    p2.name = loaded.name
    assert disassemble(p2).splitlines()[2:] == text.splitlines()[2:]


@st.composite
def random_source(draw):
    lines = [".width " + str(draw(st.sampled_from([3, 8, 64]))), "start:"]
    for i in range(draw(st.integers(1, 25))):
        op = draw(st.sampled_from(OPCODES))
        args = []
        for o in op.operands:
            if o.kind == "reg":
                hi = 14 if op.mnemonic in ("mrd", "mwr") else 15
                args.append(f"r{draw(st.integers(0, hi))}")
            elif o.kind == "simm8":
                args.append(str(draw(st.integers(-128, 127))))
            elif o.kind == "uimm5":
                args.append(str(draw(st.integers(0, 31))))
            elif o.kind == "simm16":
                args.append(str(draw(st.integers(-32768, 32767))))
            elif o.kind == "imm32":
                args.append(hex(draw(st.integers(0, 0xFFFFFFFF))))
            elif o.kind == "target":
                args.append("start")
            else:
                w = draw(st.sampled_from(op.widths))
                args.append(str(32 if w == 64 else w))
        lines.append(f"l{i}: {op.mnemonic} {', '.join(args)}")
        if draw(st.booleans()):
            kind = draw(st.sampled_from(["ascii", "word", "hex"]))
            if kind == "ascii":
                lines.append(f'    .ascii "{draw(st.text(alphabet="abc XYZ!", max_size=9))}"')
            elif kind == "word":
                lines.append(f"    .word {draw(st.integers(0, 0xFFFFFFFF))}")
            else:
                lines.append(
                    f'    .hex "{bytes(draw(st.lists(st.integers(0, 255), max_size=7))).hex()}"'
                )
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None)
@given(src=random_source())
def test_round_trip_random(src):
    p1 = assemble_text(src)
    p2 = load_png(save_png(p1))
    p3 = assemble_text(disassemble(p2))
    assert np.array_equal(p3.pixels, p1.pixels)
    assert p3.meta.semantic() == p1.meta.semantic()


def test_matrix_round_trip_and_quantization(tmp_path):
    w = np.linspace(-1.5, 2.5, 35, dtype=np.float32).reshape(5, 7)
    np.save(tmp_path / "w.npy", w)
    (tmp_path / "m.pxs").write_text('halt\nW: .matrix "w.npy"\n')
    p1 = assemble_file(tmp_path / "m.pxs")
    text = disassemble(p1)
    assert ".qmatrix 5, 7," in text
    p2 = assemble_text(text)
    assert np.array_equal(p1.pixels, p2.pixels)
    from pxi.matrix import read_header

    problem, h = read_header(p1.pixels, p1.meta.symbols["W"])
    assert problem is None and (h.rows, h.cols) == (5, 7)
    assert np.abs(h.dequantize(p1.pixels) - w).max() <= (w.max() - w.min()) / 255 / 2 + 1e-6


# --- assembler errors: file:line, what, and the fix ------------------------------------------


@pytest.mark.parametrize(
    "src, message",
    [
        ("addd r1, r2, r3\n", "<source>:1: unknown mnemonic 'addd'. Did you mean 'add'?"),
        ("add r1, r2, r16\n", "<source>:1: 'r16' is not a register (r0..r15)."),
        ("nop\naddi r1, r2, 200\n", "<source>:2: 200 = 200 does not fit addi's imm (-128..127)."),
        ("li r1, 70000\n", "use li32"),
        ("jmp nowhere\n", "undefined name 'nowhere'"),
        ("x: nop\nx: nop\n", "'x' is already defined"),
        ("out r1, r2, 64\n", "out width 64: want one of 8, 16, 32 (bits)."),
        ("mrd r1, r15, 32\n", "the address is the pair r15, r16; use r0..r14."),
        ('.qmatrix 2, 3, 0x3f800000, 0\n.hex "00010203"\nhalt\n', "but only 4 follow"),
        ("add r1, r2\n", "add takes 3 operand(s): add rd, ra, rb"),
        (".bogus 1\n", "unknown directive '.bogus'"),
        ("jmp 99\n", "branch target 99 = 99 is outside the program"),
    ],
)
def test_asm_errors(src, message):
    with pytest.raises(AsmError) as e:
        assemble_text(src)
    assert message in str(e.value)


def test_include_cycle_and_missing(tmp_path):
    (tmp_path / "a.pxs").write_text('.include "b.pxs"\n')
    (tmp_path / "b.pxs").write_text('.include "a.pxs"\n')
    with pytest.raises(AsmError, match="include cycle: a.pxs -> b.pxs -> a.pxs"):
        assemble_file(tmp_path / "a.pxs")
    (tmp_path / "c.pxs").write_text('.include "nope.pxs"\n')
    with pytest.raises(AsmError, match="c.pxs:1: cannot read"):
        assemble_file(tmp_path / "c.pxs")


def test_expressions_constants_and_chars():
    p = asm("N = 3 * (2 + 1)\n.const M N << 2\nli r1, N + M - 'A'\nli32 r2, ~0\nhalt\n")
    d = decode(p.pixels, 0)
    assert d.values == (1, 9 + 36 - 65)
    assert decode(p.pixels, 1).values == (2, 0xFFFFFFFF)


# --- images that are not PXI programs are refused ----------------------------------------


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: _png(Image.new("RGB", (4, 4))), "8-bit RGBA, this one is 8-bit RGB"),
        (lambda: _png(Image.new("P", (4, 4))), "bit palette"),
        (lambda: _png(Image.new("I;16", (4, 4))), "16-bit grayscale"),
        (lambda: _png(Image.new("LA", (4, 4))), "grayscale+alpha"),
        (lambda: b"GIF89a" + b"\0" * 40, "not a PNG file"),
        (lambda: _png(Image.new("RGBA", (4, 4)))[:-20], "truncated PNG"),
    ],
)
def test_refused_images(make, message):
    with pytest.raises(ImageError) as e:
        load_png(make(), "x.png")
    assert message in str(e.value) and str(e.value).startswith("x.png: ")


def test_corrupt_crc_and_16bit_rgba():
    data = bytearray(_png(Image.new("RGBA", (4, 4), (1, 2, 3, 4))))
    data[40] ^= 0xFF  # inside IDAT (or a chunk before it): the CRC no longer matches
    with pytest.raises(ImageError, match="corrupt PNG"):
        load_png(bytes(data), "x.png")
    # A 16-bit RGBA PNG written by hand (Pillow reads it as RGBA, we must refuse it).
    raw = b"".join(b"\0" + b"\x00\x01" * 4 * 2 for _ in range(2))
    ihdr = struct.pack(">IIBBBBB", 2, 2, 16, 6, 0, 0, 0)

    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError, match="16-bit RGBA"):
        load_png(png, "x.png")


def test_pixels_alone_execute(tmp_path):
    """A PNG without any PXI metadata is still a program (pc = y * width + x)."""
    from pxi.numpy_exec import NumpyExecutor

    px = asm("li r1, 42\nhalt\n").rgba()
    Image.fromarray(px, "RGBA").save(tmp_path / "bare.png")
    p = load_png(tmp_path / "bare.png")
    assert p.meta.symbols == {} and p.meta.sections == []
    ex = NumpyExecutor(p, 1, 64)
    ex.run(100)
    assert ex.state().regs[0, 1] == 42
