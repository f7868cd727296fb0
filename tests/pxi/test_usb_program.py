"""The pixel xHCI driver's pure parts, without a device: the test program assembles (with
scenario defines) and round-trips through PNG and disassembly; the ring producer, run on
the NumPy executor, writes cycle bits and the Link TRB as the xHCI spec demands across
wrap-arounds; and the keyboard's keymap in pixels is the US layout the `key` step types."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hil.steps.key import KEYMAP
from pxi.asm import assemble_file, assemble_text
from pxi.backends import create
from pxi.disasm import disassemble
from pxi.image import load_png, save_png

USB = Path(__file__).resolve().parents[2] / "pxi" / "programs" / "usb"
HEAP = 0x80000000
RING, STRUCT, N = 0x8000, 0x4C00, 64


def test_usbtest_assembles_round_trips_and_takes_defines(tmp_path):
    p1 = assemble_file(USB / "usbtest.pxs")
    png = tmp_path / "u.png"
    save_png(p1, png)
    p2 = assemble_text(disassemble(load_png(png)), "re.pxs")
    assert np.array_equal(p2.pixels, p1.pixels)
    p3 = assemble_file(USB / "usbtest.pxs", defines={"KBD_LINES": 3, "IRQ_MODE": 0})
    assert not np.array_equal(p3.pixels, p1.pixels)


HARNESS = f"""
.threads 1
.entry main
main:
    li32 r2, VARS
    li32 r4, {HEAP}
    st32 r4, r2, V_HEAP
    li32 r3, {STRUCT}
    li32 r4, {RING}
    call ring_init
    li r1, 0
loop:
    li32 r5, PUTS
    beq r1, r5, done
    mov r6, r1                      ; DW0 = the TRB's sequence number
    li r7, 0
    li r8, 0
    li32 r9, T_NORMAL
    li32 r3, {STRUCT}
    call ring_put
    addi r1, r1, 1
    jmp loop
done:
    halt
.include "{USB / "xhci.pxs"}"
.include "{USB.parent / "lib" / "vgpu_layout.pxs"}"
.include "{USB.parent / "lib" / "irq.pxs"}"
.include "{USB.parent / "lib" / "print.pxs"}"
.include "{USB.parent / "uart.pxs"}"
"""


def ring_after(puts: int) -> np.ndarray:
    prog = assemble_text(HARNESS, defines={"PUTS": puts})
    ex = create("numpy", prog, threads=1, memory_bytes=0x10000)
    for _ in range(100):
        res = ex.run(1_000_000)
        if res.finished:
            break
    assert res.finished and not res.faults
    return np.frombuffer(ex.read_memory(RING, N * 16), "<u4").reshape(N, 4)


def test_ring_producer_cycle_bits_and_link_across_wraps():
    # 63 usable TRBs a lap: the 100th put is the 37th TRB of the second lap
    ring = ring_after(100)
    link = ring[N - 1]
    assert link[0] == HEAP + RING and link[1] == 0
    assert (link[3] >> 10) & 63 == 6 and link[3] & 2  # Link TRB, Toggle Cycle
    assert link[3] & 1 == 1  # handed over with the first lap's cycle (1)
    for i in range(N - 1):
        seq, cycle = int(ring[i][0]), int(ring[i][3] & 1)
        if i < 100 - (N - 1):  # rewritten in lap 2: cycle 0
            assert (seq, cycle) == (N - 1 + i, 0), i
        else:  # still lap 1's: cycle 1, which the controller now reads as stale
            assert (seq, cycle) == (i, 1), i
        assert (ring[i][3] >> 10) & 63 == 1


def test_ring_before_the_first_wrap_leaves_the_link_to_the_producer():
    ring = ring_after(5)
    assert ring[N - 1][3] & 1 == 0  # not handed over yet: the controller stops before it
    assert [int(r[3] & 1) for r in ring[:6]] == [1, 1, 1, 1, 1, 0]


# HID usages (USB HID Usage Tables, keyboard page) of the keys the key step types
_USAGE = (
    {c: 4 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    | {c: 30 + i for i, c in enumerate("1234567890")}
    | {"tab": 43, "spc": 44, "minus": 45, "equal": 46, "bracket_left": 47}
    | {"bracket_right": 48, "backslash": 49, "semicolon": 51, "apostrophe": 52}
    | {"grave_accent": 53, "comma": 54, "dot": 55, "slash": 56}
)


def test_the_pixel_keymap_is_the_key_steps_us_layout():
    prog = assemble_file(USB / "usbtest.pxs")
    at = prog.meta.symbols["keymap"] * 4
    table = prog.pixels.astype("<u4").tobytes()[at : at + 2 * 57]
    for char, (qcode, shift) in KEYMAP.items():
        if char == "\n":
            continue  # Enter ends the line: the driver's own case
        assert table[_USAGE[qcode] + 57 * shift] == ord(char), (char, qcode, shift)
