"""The block pattern and checksum: the pixel routines (pxi/programs/lib/blockpattern.pxs)
on the NumPy executor against hil/blockpattern.py, the host's copy of the definition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hil import blockpattern as bp
from pxi.asm import assemble_text
from pxi.backends import create

LIB = Path(__file__).resolve().parents[2] / "pxi" / "programs" / "lib" / "blockpattern.pxs"

HARNESS = f"""
.threads 1
main:
    li32 r3, 0x100
    li32 r4, LBA
    li32 r5, WORDS
    li32 r6, SEED
    call pat_fill
    li32 r3, 0x100
    li32 r4, LBA
    li32 r5, WORDS
    li32 r6, SEED
    li r10, 0
    call pat_verify
    st32 r10, r0, 4          ; mismatches (0)
    li32 r3, 0x100
    li32 r5, WORDS
    li32 r11, CSUM_INIT
    call csum
    st32 r11, r0, 0
    halt
.include "{LIB}"
"""


def run_pixels(seed: int, lba: int, words: int) -> tuple[bytes, int, int]:
    prog = assemble_text(HARNESS, defines={"SEED": seed, "LBA": lba, "WORDS": words})
    ex = create("numpy", prog, threads=1, memory_bytes=0x100 + 4 * words)
    for _ in range(100):
        res = ex.run(1_000_000)
        if res.finished:
            break
    assert res.finished and not res.faults
    mem = ex.read_memory(0, 0x100 + 4 * words)
    return mem[0x100:], int.from_bytes(mem[0:4], "little"), int.from_bytes(mem[4:8], "little")


@pytest.mark.parametrize(
    "seed, lba, lba_size",
    [(0, 0, 512), (1, 7, 512), (0xDEADBEEF, 123456, 4096), (42, (1 << 32) + 5, 512)],
)
def test_pixels_and_python_agree(seed, lba, lba_size):
    data, csum, mismatches = run_pixels(seed, lba & 0xFFFFFFFF, lba_size // 4)
    assert data == bp.pattern(seed, lba, lba_size)
    assert csum == bp.checksum(data)
    assert mismatches == 0


def test_pattern_properties():
    a = bp.pattern(1, 0, 512, count=3)
    assert len(a) == 1536 and a[:512] == bp.pattern(1, 0, 512)
    assert bp.pattern(1, 0, 512) != bp.pattern(2, 0, 512) != bp.pattern(1, 1, 512)
    assert bp.checksum(a) == bp.checksum(a[512:], bp.checksum(a[:512]))  # it continues
    words = np.frombuffer(a, "<u4")
    assert len(set(words.tolist())) > 0.99 * len(words)  # no short cycles


def test_first_mismatch_names_the_lba_and_byte(tmp_path):
    img = tmp_path / "d.img"
    data = bytearray(64 * 512)
    data[10 * 512 : 14 * 512] = bp.pattern(9, 10, 512, count=4)
    img.write_bytes(bytes(data))
    assert bp.first_mismatch(img, 512, 9, [(10, 4)]) is None
    data[12 * 512 + 33] ^= 0xFF
    img.write_bytes(bytes(data))
    m = bp.first_mismatch(img, 512, 9, [(10, 4)])
    assert (m.lba, m.offset) == (12, 33) and m.found == m.expected ^ 0xFF
    assert "LBA 12 byte 33" in str(m)
    data[12 * 512 + 33] ^= 0xFF
    data[40 * 512] = 1  # outside the written ranges: must be untouched (zero)
    img.write_bytes(bytes(data))
    assert bp.first_mismatch(img, 512, 9, [(10, 4)]) == bp.Mismatch(40, 0, 0, 1)


def test_random_fill_is_seekable_and_checked(tmp_path):
    import functools

    full = bp.random_fill(7, 0, 64 * 512)
    assert bp.random_fill(7, 10 * 512, 3 * 512) == full[10 * 512 : 13 * 512]
    assert full != bp.random_fill(8, 0, 64 * 512) and full[:512] != bp.pattern(7, 0, 512)
    data = bytearray(full)
    data[2 * 4096 : 3 * 4096] = bp.pattern(7, 2, 4096)  # LBA 2 of a 4 KiB-LBA disk
    img = tmp_path / "r.img"
    img.write_bytes(bytes(data))
    fill = functools.partial(bp.random_fill, 7)
    assert bp.first_mismatch(img, 4096, 7, [(2, 1)], untouched=fill) is None
    assert bp.first_mismatch(img, 4096, 7, [(2, 1)]).lba == 0  # "zeros" is wrong here
    data[40 * 512 + 5] ^= 1
    img.write_bytes(bytes(data))
    m = bp.first_mismatch(img, 4096, 7, [(2, 1)], untouched=fill)
    assert (m.lba, m.offset) == (5, 5)
