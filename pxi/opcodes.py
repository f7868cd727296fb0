# ruff: noqa: E501  (the opcode table reads best as one line per opcode)
"""The PXI opcode table: the single source of truth for the instruction set.

Everything else is derived from ``OPCODES``: the assembler's mnemonics and operand
checks, the disassembler, the NumPy executor's dispatch table, the WGSL constants of the
wgpu executor (``pxi.wgslgen``) and the ISA table in docs/pxi.md (``pxi.doctable``).

Encoding (one instruction = one RGBA8 pixel, the pixel read as a little-endian u32
``R | G << 8 | B << 16 | A << 24``): R is the opcode, a printable ASCII character, and
G, B, A are operand fields.  Two-pixel instructions carry a 32-bit word (an immediate or
a branch target) or a fourth register in the following pixel, the *extension pixel*.

Every operand kind knows which bits of the pixel it owns.  The bits no operand owns
(unused fields, the high nibble of a register field, the high bits of a shift amount)
form the opcode's *must-be-zero mask*: an executor faults with BAD_ENCODING when any of
them is set, so every valid pixel has exactly one textual form and asm -> png -> disasm
-> asm is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

# Operand kinds: (field, kind).  Fields: "G", "B", "A" (bytes of the instruction pixel),
# "BA" (B | A << 8, 16 bits), "X" (the whole extension pixel), "XR" (R byte of the
# extension pixel).
#   reg     a register r0..r15 (low nibble of the field; the high nibble must be 0)
#   simm8   signed 8-bit immediate (-128..127)
#   uimm5   shift amount 0..31 (the field's top three bits must be 0)
#   simm16  signed 16-bit immediate
#   imm32   32-bit immediate (extension pixel)
#   target  absolute branch target, a pc (extension pixel)
#   width   access width in bits, stored as the number itself (8, 16, 32 or 64)
REG, SIMM8, UIMM5, SIMM16, IMM32, TARGET, WIDTH = (
    "reg",
    "simm8",
    "uimm5",
    "simm16",
    "imm32",
    "target",
    "width",
)

_FIELD_BITS = {"G": 0x0000FF00, "B": 0x00FF0000, "A": 0xFF000000, "BA": 0xFFFF0000}
_FIELD_SHIFT = {"G": 8, "B": 16, "A": 24, "BA": 16}


@dataclass(frozen=True)
class Operand:
    field: str
    kind: str
    name: str  # as shown in the ISA table: rd, ra, rb, imm, target, ...


@dataclass(frozen=True)
class Opcode:
    char: str  # the R byte, a printable ASCII character
    mnemonic: str
    operands: tuple[Operand, ...]
    group: str  # control | alu | memory | request | neural
    summary: str  # one line for the ISA table
    widths: tuple[int, ...] = ()  # allowed values of a WIDTH operand

    @property
    def code(self) -> int:
        return ord(self.char)

    @property
    def length(self) -> int:
        """Pixels taken by the instruction (1, or 2 with an extension pixel)."""
        return 2 if any(op.field in ("X", "XR") for op in self.operands) else 1

    @cached_property
    def mz(self) -> int:
        """Must-be-zero mask of the instruction pixel (bits no operand owns)."""
        mask = 0xFFFFFF00
        for op in self.operands:
            if op.field not in _FIELD_BITS:
                continue
            owned = _FIELD_BITS[op.field]
            if op.kind == REG:  # only the low nibble is a register number
                owned = 0xF << _FIELD_SHIFT[op.field]
            elif op.kind == UIMM5:
                owned = 0x1F << _FIELD_SHIFT[op.field]
            mask &= ~owned
        return mask & 0xFFFFFFFF

    @cached_property
    def ext_mz(self) -> int:
        """Must-be-zero mask of the extension pixel (0 when it is a whole word)."""
        kinds = {op.field: op for op in self.operands}
        if "XR" in kinds:
            return 0xFFFFFFF0
        return 0

    @property
    def syntax(self) -> str:
        names = ", ".join(op.name for op in self.operands)
        return f"{self.mnemonic} {names}".strip()


def _ops(*spec: str) -> tuple[Operand, ...]:
    """Parse 'G:reg:rd' style operand specs (assembly order)."""
    out = []
    for s in spec:
        field, kind, name = s.split(":")
        out.append(Operand(field, kind, name))
    return tuple(out)


_D, _A, _B = "G:reg:rd", "B:reg:ra", "A:reg:rb"
_RRR = _ops(_D, _A, _B)

# fmt: off
OPCODES: tuple[Opcode, ...] = (
    # --- control ------------------------------------------------------------------
    Opcode("H", "halt", (), "control", "stop this thread (pc stays on the halt)"),
    Opcode("_", "nop", (), "control", "do nothing"),
    Opcode("Y", "yield", (), "control", "end this thread's part of the round; runnable again next round"),
    Opcode("B", "barrier", (), "control", "wait until every live thread has reached a barrier"),
    Opcode("J", "jmp", _ops("X:target:target"), "control", "pc = target"),
    Opcode("C", "call", _ops("X:target:target"), "control", "push pc+2 on the call stack (depth 8); pc = target"),
    Opcode("r", "ret", (), "control", "pc = pop call stack"),
    Opcode("g", "jr", _ops("G:reg:ra"), "control", "pc = ra"),
    Opcode("=", "beq", _ops("G:reg:ra", "B:reg:rb", "X:target:target"), "control", "if ra == rb: pc = target"),
    Opcode("!", "bne", _ops("G:reg:ra", "B:reg:rb", "X:target:target"), "control", "if ra != rb: pc = target"),
    Opcode("<", "blt", _ops("G:reg:ra", "B:reg:rb", "X:target:target"), "control", "if ra < rb (signed): pc = target"),
    Opcode(">", "bge", _ops("G:reg:ra", "B:reg:rb", "X:target:target"), "control", "if ra >= rb (signed): pc = target"),
    Opcode("(", "bltu", _ops("G:reg:ra", "B:reg:rb", "X:target:target"), "control", "if ra < rb (unsigned): pc = target"),
    Opcode(")", "bgeu", _ops("G:reg:ra", "B:reg:rb", "X:target:target"), "control", "if ra >= rb (unsigned): pc = target"),
    Opcode("z", "bz", _ops("G:reg:ra", "X:target:target"), "control", "if ra == 0: pc = target"),
    Opcode("n", "bnz", _ops("G:reg:ra", "X:target:target"), "control", "if ra != 0: pc = target"),
    # --- integer ALU (all arithmetic wraps modulo 2**32) ----------------------------
    Opcode("+", "add", _RRR, "alu", "rd = ra + rb"),
    Opcode("-", "sub", _RRR, "alu", "rd = ra - rb"),
    Opcode("*", "mul", _RRR, "alu", "rd = low 32 bits of ra * rb"),
    Opcode("&", "and", _RRR, "alu", "rd = ra & rb"),
    Opcode("|", "or", _RRR, "alu", "rd = ra | rb"),
    Opcode("^", "xor", _RRR, "alu", "rd = ra ^ rb"),
    Opcode("{", "shl", _RRR, "alu", "rd = ra << (rb & 31)"),
    Opcode("}", "shr", _RRR, "alu", "rd = ra >> (rb & 31) (logical)"),
    Opcode("]", "sar", _RRR, "alu", "rd = ra >> (rb & 31) (arithmetic)"),
    Opcode("e", "seq", _RRR, "alu", "rd = 1 if ra == rb else 0"),
    Opcode("l", "slt", _RRR, "alu", "rd = 1 if ra < rb (signed) else 0"),
    Opcode("b", "sltu", _RRR, "alu", "rd = 1 if ra < rb (unsigned) else 0"),
    Opcode("m", "mov", _ops(_D, _A), "alu", "rd = ra"),
    Opcode("a", "addi", _ops(_D, _A, "A:simm8:imm"), "alu", "rd = ra + imm (imm -128..127)"),
    Opcode("s", "shli", _ops(_D, _A, "A:uimm5:imm"), "alu", "rd = ra << imm (imm 0..31)"),
    Opcode("t", "shri", _ops(_D, _A, "A:uimm5:imm"), "alu", "rd = ra >> imm (logical, imm 0..31)"),
    Opcode("#", "li", _ops(_D, "BA:simm16:imm"), "alu", "rd = imm (sign-extended, -32768..32767)"),
    Opcode("$", "li32", _ops(_D, "X:imm32:imm"), "alu", "rd = imm (any 32-bit value, in the extension pixel)"),
    Opcode("T", "tid", _ops(_D), "alu", "rd = this thread's id (0..threads-1)"),
    Opcode("N", "nthreads", _ops(_D), "alu", "rd = number of threads"),
    # --- memory (data memory: byte addresses, little-endian, natural alignment) ----
    Opcode("1", "ld8", _ops(_D, _A, "A:simm8:off"), "memory", "rd = zero-extended byte at data[ra + off]"),
    Opcode("2", "ld16", _ops(_D, _A, "A:simm8:off"), "memory", "rd = zero-extended 16-bit value at data[ra + off]"),
    Opcode("4", "ld32", _ops(_D, _A, "A:simm8:off"), "memory", "rd = 32-bit word at data[ra + off]"),
    Opcode(",", "st8", _ops("G:reg:rs", _A, "A:simm8:off"), "memory", "data[ra + off] = low byte of rs"),
    Opcode(";", "st16", _ops("G:reg:rs", _A, "A:simm8:off"), "memory", "data[ra + off] = low 16 bits of rs"),
    Opcode(":", "st32", _ops("G:reg:rs", _A, "A:simm8:off"), "memory", "data[ra + off] = rs"),
    Opcode("p", "lp8", _ops(_D, _A, "A:simm8:off"), "memory", "rd = byte of the program image at image byte address ra + off (pc*4 + channel)"),
    Opcode("P", "lp32", _ops(_D, _A, "A:simm8:off"), "memory", "rd = pixel of the program image at image byte address ra + off (4-aligned)"),
    # --- requests to the host (the thread blocks until the caller responds; outp and
    #     mwrp are posted: the thread goes on while it holds a posting credit) -------
    Opcode("i", "in", _ops(_D, "B:reg:rport", "A:width:width"), "request", "rd = port input of width 8/16/32 from port rport (0..0xffff)", (8, 16, 32)),
    Opcode("o", "out", _ops("G:reg:rport", "B:reg:rv", "A:width:width"), "request", "port output of the low width bits of rv to port rport", (8, 16, 32)),
    Opcode("v", "mrd", _ops(_D, "B:reg:ra", "A:width:width"), "request", "MMIO read at address ra | ra+1 << 32 (naturally aligned); width 64 fills rd, rd+1", (8, 16, 32, 64)),
    Opcode("w", "mwr", _ops("G:reg:ra", "B:reg:rv", "A:width:width"), "request", "MMIO write of rv (rv | rv+1 << 32 for width 64) to address ra | ra+1 << 32", (8, 16, 32, 64)),
    Opcode("O", "outp", _ops("G:reg:rport", "B:reg:rv", "A:width:width"), "request", "posted out: the thread does not wait; served in order with its later requests (docs/pxi.md, Posted writes)", (8, 16, 32)),
    Opcode("K", "mwrp", _ops("G:reg:ra", "B:reg:rv", "A:width:width"), "request", "posted mwr: the thread does not wait; served in order with its later requests (docs/pxi.md, Posted writes)", (8, 16, 32, 64)),
    Opcode("W", "wait", _ops(_D, "B:reg:ra"), "request", "wait for an event (ra = event selector); rd = the event value the host answers"),
    # --- neural ops (float32 tensors in data memory, quantized matrices in the image)
    Opcode("M", "matmul", _ops("G:reg:rout", "B:reg:rin", "A:reg:rmat", "XR:reg:rrows"), "neural", "out[rows,N] = in[rows,K] @ dequant(mat[K,N])"),
    Opcode("A", "addmat", _ops("G:reg:rout", "B:reg:rin", "A:reg:rmat", "XR:reg:rrows"), "neural", "out[rows,N] = in[rows,N] + dequant(mat[1 or rows, N]) (bias add)"),
    Opcode("R", "relu", _ops("G:reg:rout", "B:reg:rin", "A:reg:rn"), "neural", "out[i] = in[i] if in[i] > 0 else 0, for i < rn"),
    Opcode("E", "embed", _ops("G:reg:rout", "B:reg:rtok", "A:reg:rmat"), "neural", "out[N] = dequant(mat[K,N])[rtok] (embedding lookup)"),
    Opcode("X", "argmax", _ops(_D, "B:reg:rin", "A:reg:rn"), "neural", "rd = first index of the maximum of in[0..rn)"),
)
# fmt: on

# The R byte of a quantized-matrix header pixel.  It is data, not an instruction:
# executing it faults UNKNOWN_OPCODE like any other byte that is not in OPCODES.
MATRIX_MARKER = "Q"
MATRIX_DTYPE_U8 = 1
MATRIX_HEADER_PIXELS = 5

BY_CHAR: dict[int, Opcode] = {op.code: op for op in OPCODES}
BY_MNEMONIC: dict[str, Opcode] = {op.mnemonic: op for op in OPCODES}


def _check_table() -> None:
    """The table's own invariants; a broken table must not import."""
    seen: set[str] = set()
    for op in OPCODES:
        assert len(op.char) == 1 and 0x21 <= ord(op.char) <= 0x7E, op
        assert op.char not in seen, f"duplicate opcode character {op.char!r}"
        seen.add(op.char)
        assert op.char != MATRIX_MARKER, "the matrix marker must not be an opcode"
        assert (WIDTH in {o.kind for o in op.operands}) == bool(op.widths), op
    assert len(BY_MNEMONIC) == len(OPCODES), "duplicate mnemonic"


_check_table()
