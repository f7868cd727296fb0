"""The pixel NVMe driver's pure parts, without a device: it assembles (with and without
scenario defines), round-trips through PNG and disassembly, refuses a bad configuration
at assembly time where it can, and its PRP builder -- run on the NumPy executor --
produces exactly the PRP1/PRP2/list the NVMe spec demands for every buffer layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pxi.asm import assemble_file, assemble_text
from pxi.backends import create
from pxi.disasm import disassemble
from pxi.image import load_png, save_png

NVME = Path(__file__).resolve().parents[2] / "pxi" / "programs" / "nvme"
HEAP = 0x80000000  # a plausible heap bus address (page-aligned)
VARS, PRPLIST, OUT = 0x1000, 0xC000, 0x800


def test_blocktest_assembles_round_trips_and_takes_defines(tmp_path):
    p1 = assemble_file(NVME / "blocktest.pxs")
    assert p1.meta.threads == 9
    png = tmp_path / "b.png"
    save_png(p1, png)
    p2 = assemble_text(disassemble(load_png(png)), "re.pxs")
    assert np.array_equal(p2.pixels, p1.pixels)
    p3 = assemble_file(NVME / "blocktest.pxs", defines={"WORKERS": 4, "QDW": 2, "SEED": 7})
    assert p3.meta.threads == 5 and not np.array_equal(p3.pixels, p1.pixels)


HARNESS = f"""
.threads 1
main:
    li32 r2, VARS
    li32 r4, {HEAP}
    st32 r4, r2, V_HEAP
    li32 r6, ADDR
    li32 r8, LEN
    call prp_build
    li32 r3, {OUT}
    st32 r6, r3, 0
    st32 r7, r3, 4
    halt
.include "{NVME / "nvme.pxs"}"
.include "{NVME.parent / "lib" / "vgpu_layout.pxs"}"
.include "{NVME.parent / "lib" / "irq.pxs"}"
.include "{NVME.parent / "lib" / "mmio.pxs"}"
.include "{NVME.parent / "lib" / "print.pxs"}"
.include "{NVME.parent / "lib" / "nvme_status.pxs"}"
.include "{NVME.parent / "uart.pxs"}"
"""


def prp_model(addr: int, length: int) -> tuple[int, int, list[int]]:
    """NVMe 1.4 4.3: PRP1 = the buffer (any dword offset); PRP2 = 0 if it ends in the
    first page, the second page if it ends there, else a list of the remaining pages."""
    first = 0x1000 - (addr & 0xFFF)
    if length <= first:
        return HEAP + addr, 0, []
    pages = [(addr & ~0xFFF) + 0x1000 * (i + 1) for i in range(-(-(length - first) // 0x1000))]
    if len(pages) == 1:
        return HEAP + addr, HEAP + pages[0], []
    return HEAP + addr, HEAP + PRPLIST, [HEAP + p for p in pages]


@pytest.mark.parametrize(
    "addr, length",
    [
        (0x10000, 0x1000),  # one aligned page
        (0x10000, 0x200),  # one LBA
        (0x10040, 0xFC0),  # offset, ends exactly at the page end
        (0x10040, 0xFC4),  # offset, 4 bytes into the next page: PRP2 direct
        (0x10000, 0x2000),  # two pages: PRP2 direct
        (0x10000, 0x2001),  # just over two pages: a list
        (0x10040, 0x10000),  # 64 KiB at +64: PRP1 offset + a list of 16
        (0x50000, 0x80000),  # MDTS (512 KiB): a list of 127
        (0x50000, 0x81000),  # one page over MDTS: 128 entries
    ],
)
def test_prp_build_matches_the_spec(addr, length):
    prog = assemble_text(HARNESS, defines={"ADDR": addr, "LEN": length})
    ex = create("numpy", prog, threads=1, memory_bytes=0x10000)
    res = ex.run(1_000_000)
    assert res.finished and not res.faults, res.faults
    mem = ex.read_memory(0, 0x10000)
    prp1, prp2 = np.frombuffer(mem[OUT : OUT + 8], "<u4").tolist()
    want1, want2, want_list = prp_model(addr, length)
    assert (prp1, prp2) == (want1 & 0xFFFFFFFF, want2 & 0xFFFFFFFF)
    entries = np.frombuffer(mem[PRPLIST : PRPLIST + 8 * len(want_list)], "<u8").tolist()
    assert entries == want_list
