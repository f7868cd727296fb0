"""NumPy vs wgpu: registers, memory, request streams, faults and step counts identical.

A corpus of hand-written programs plus hypothesis-generated random integer programs
(random opcodes and operands, random branch targets, requests answered or denied by a
deterministic host, several threads with private memory regions so programs are
race-free by construction, budgets that stop runaways mid-loop)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pxi_util import PROGRAMS, asm, assert_same_state, run_both

from pxi.asm import assemble_file
from pxi.image import Program
from pxi.opcodes import BY_MNEMONIC, IMM32, REG, SIMM8, SIMM16, TARGET, UIMM5, WIDTH

pytestmark = pytest.mark.wgpu

CORPUS = {
    "alu": """
        li r1, -5
        li32 r2, 0x80000001
        add r3, r1, r2
        sub r4, r1, r2
        mul r5, r2, r2
        and r6, r1, r2
        or r7, r1, r2
        xor r8, r1, r2
        li r9, 33
        shl r10, r2, r9
        shr r11, r2, r9
        sar r12, r1, r9
        slt r13, r1, r2
        sltu r14, r1, r2
        seq r15, r1, r1
        addi r0, r1, -128
        shli r1, r2, 31
        shri r2, r2, 31
        halt
    """,
    "memory": """
        li r1, 0x100
        li32 r2, 0xdeadbeef
        st32 r2, r1, 0
        st16 r2, r1, 6
        st8 r2, r1, -1
        ld8 r3, r1, 1
        ld16 r4, r1, 2
        ld32 r5, r1, 4
        ld32 r6, r1, -4
        li32 r7, data*4
        lp8 r8, r7, 3
        lp32 r9, r7, 4
        halt
    data:
        .word 0x11223344, 0x55667788
    """,
    "calls": """
        li r1, 5
        call f
        call f
        halt
    f:  addi r1, r1, 1
        bz r1, never
        ret
    never:
        halt
    """,
    "loop_and_branches": """
        li r1, 0
        li r2, 100
    loop:
        addi r1, r1, 3
        blt r1, r2, loop
        bgeu r1, r2, next
        halt
    next:
        li r3, -1
        bltu r1, r3, ok
        halt
    ok: bge r3, r1, bad
        halt
    bad: jmp bad
    """,
    "requests": """
        li r1, 0x3f8
        li r2, 65
        out r1, r2, 8
        in r3, r1, 16
        li32 r4, 0xfebf0000
        li r5, 0
        mrd r6, r4, 64
        li32 r8, 0x12345678
        mwr r4, r8, 32
        wait r9, r2
        halt
    """,
    "threads_barrier_yield": """
        .threads 8
        tid r1
        nthreads r2
        shli r3, r1, 4
        st32 r1, r3, 0
        yield
        barrier
        addi r4, r1, 1
        bne r4, r2, notlast
        li r4, 0
    notlast:
        shli r4, r4, 4
        ld32 r5, r4, 0          ; read a neighbour's word: ordered by the barrier
        st32 r5, r3, 4
        halt
    """,
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus(name):
    prog = asm(CORPUS[name])
    exs, logs = run_both(prog, threads=prog.meta.threads or 3, memory=4096)
    assert_same_state(exs)


@pytest.mark.parametrize("budget", [1, 7, 1000])
def test_shipped_programs(budget):
    """hello and checksum, driven in small budget slices."""
    for name, threads in (("hello.pxs", 1), ("checksum.pxs", 40)):
        prog = assemble_file(PROGRAMS / name)
        exs, _ = run_both(prog, threads=threads, memory=8192, budget=budget, rounds=100_000)
        assert_same_state(exs)


# --- random programs -------------------------------------------------------------------

# Memory instructions always use r15 as their base; every thread sets r15 = tid * 256 and
# no other instruction writes r15, so each thread only touches its own 256-byte region
# (offsets are -128..127 around base+128): random programs are race-free by construction.
MEM_OPS = {"ld8", "ld16", "ld32", "st8", "st16", "st32"}
RANDOM_OPS = [
    m
    for m in BY_MNEMONIC
    if BY_MNEMONIC[m].group in ("control", "alu", "memory", "request") and m != "jr"
]


ALU_OPS = [m for m in RANDOM_OPS if BY_MNEMONIC[m].group == "alu"]


@st.composite
def instruction(draw) -> tuple[list[int], object]:
    """Pixels of one random instruction, and how to patch its branch target later:
    None, ("insn", k) for the start of the k-th instruction, or ("raw", pc)."""
    if draw(
        st.sampled_from([False] * 40 + [True])
    ):  # now and then a raw pixel (bad opcodes/encodings)
        return [draw(st.integers(0, 0xFFFFFFFF))], None
    names = draw(st.sampled_from([ALU_OPS, RANDOM_OPS]))  # ALU-heavy mix
    op = BY_MNEMONIC[draw(st.sampled_from(names))]
    w, ext, target = op.code, 0, None
    for o in op.operands:
        if o.kind == REG:
            if op.mnemonic in MEM_OPS and o.name == "ra":
                v = 15  # the thread's own memory region
            elif o.name == "rd" or (op.mnemonic in ("mrd", "mwr") and o.name == "ra"):
                v = draw(st.integers(0, 14))  # never overwrite r15; MMIO pairs end at r15
            else:
                v = draw(st.integers(0, 15))
        elif o.kind == SIMM8:
            v = draw(st.integers(-128, 127)) & 0xFF
        elif o.kind == UIMM5:
            v = draw(st.integers(0, 31))
        elif o.kind == SIMM16:
            v = draw(st.integers(-40000, 40000)) & 0xFFFF
        elif o.kind == IMM32:
            v = (
                draw(st.sampled_from([0, 1, 0xFFFFFFFF, 0x80000000, 0x3F8, 0x3FB]))
                if draw(st.booleans())
                else draw(st.integers(0, 0xFFFFFFFF))
            )
        elif o.kind == TARGET:
            v = 0
            if draw(st.sampled_from([False] * 12 + [True])):
                target = (
                    "raw",
                    draw(st.integers(0, 200)),
                )  # often out of range, or mid-instruction
            else:
                target = ("insn", draw(st.integers(0, 1000)))
        elif o.kind == WIDTH:
            v = draw(st.sampled_from(op.widths))
            if op.mnemonic in ("mrd", "mwr") and v == 64:
                v = 32  # 64-bit pairs are covered by the corpus
        else:  # pragma: no cover
            raise AssertionError(o.kind)
        if o.field == "X":
            ext = v
        elif o.field == "XR":
            ext |= v
        else:
            w |= v << {"G": 8, "B": 16, "A": 24, "BA": 16}[o.field]
    return ([w, ext] if op.length == 2 else [w]), target


@st.composite
def random_program(draw):
    seeds = draw(st.lists(st.integers(0, 0xFFFFFFFF), min_size=6, max_size=6))
    setup = "".join(f"li32 r{i}, {v}\n" for i, v in enumerate(seeds))  # interesting register values
    setup += "tid r15\nshli r15, r15, 8\naddi r15, r15, 127\naddi r15, r15, 1\n"
    prologue = list(asm(setup).pixels[:16])
    insns = draw(st.lists(instruction(), min_size=3, max_size=40))
    starts, pc = [], len(prologue)
    for px, _ in insns:
        starts.append(pc)
        pc += len(px)
    pixels = list(prologue)
    for px, target in insns:
        px = list(px)
        if target is not None:
            kind, v = target
            px[1] = starts[v % len(starts)] if kind == "insn" else v
        pixels += px
    pixels.append(ord("H"))  # falling off the end halts (a fetch past the end is tested elsewhere)
    width = draw(st.sampled_from([4, 8, 16]))
    arr = np.array(pixels, dtype=np.uint32)
    arr = np.concatenate([arr, np.zeros((-arr.size) % width, np.uint32)])
    return Program(arr, width)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=random_program(), threads=st.integers(1, 6), budget=st.integers(1, 300))
def test_random_programs(prog, threads, budget):
    exs, logs = run_both(prog, threads=threads, memory=256 * 8, budget=budget, rounds=6)
    assert_same_state(exs)


ALU = ["add", "sub", "mul", "and", "or", "xor", "shl", "shr", "sar", "seq", "slt", "sltu"]
ALU_PROGRAM = asm(
    "tid r1\nshli r2, r1, 6\nld32 r3, r2, 0\nld32 r4, r2, 4\n"
    + "".join(f"{op} r5, r3, r4\nst32 r5, r2, {8 + 4 * i}\n" for i, op in enumerate(ALU))
    + "halt\n"
)


def _alu_ref(op: str, a: int, b: int) -> int:
    sa, sb, s = a - (a >> 31 << 32), b - (b >> 31 << 32), b & 31
    return {
        "add": a + b,
        "sub": a - b,
        "mul": a * b,
        "and": a & b,
        "or": a | b,
        "xor": a ^ b,
        "shl": a << s,
        "shr": a >> s,
        "sar": sa >> s,
        "seq": int(a == b),
        "slt": int(sa < sb),
        "sltu": int(a < b),
    }[op] & 0xFFFFFFFF


@settings(max_examples=15, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)), min_size=64, max_size=64
    )
)
def test_alu_against_python(pairs):
    """Each of 64 threads runs every ALU op on its own random operands; both backends
    must match each other and the Python definition."""
    inputs = np.zeros((64, 16), np.uint32)
    inputs[:, :2] = np.array(pairs, dtype=np.uint64).astype(np.uint32)
    exs, _ = run_both(
        ALU_PROGRAM,
        threads=64,
        memory=64 * 64,
        setup=lambda ex: ex.write_memory(0, inputs.tobytes()),
    )
    assert_same_state(exs)
    out = np.frombuffer(exs[1].read_memory(0, 64 * 64), np.uint32).reshape(64, 16)
    for t, (a, b) in enumerate(pairs):
        for i, op in enumerate(ALU):
            assert out[t, 2 + i] == _alu_ref(op, a, b), (op, hex(a), hex(b))
