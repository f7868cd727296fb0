"""The PXI assembler: .pxs source -> Program (pixels + metadata).

Syntax (docs/pxi.md, "Assembly language"):

    ; comment            (also // comment)
    NAME = expr          constant (also `.const NAME expr`)
    .default NAME expr   constant unless NAME is already defined: predefined by the
                         caller (assemble_file's `defines`: scenario parameters such as
                         LBA ranges or a seed) or a constant of an including file
    label:               a pc; may share a line with a statement
    mnemonic a, b, c     an instruction from the opcode table
    .directive args

Expressions are integers, 'c' characters, names (labels, constants) and the operators
+ - * / % << >> & | ^ ~ with parentheses.  Two passes: the first places every statement
(sizes never depend on labels), the second encodes.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import AsmError
from .image import Meta, Program, Section
from .machine import MAX_PIXELS
from .matrix import pack_bytes, quantize
from .opcodes import (
    BY_MNEMONIC,
    IMM32,
    MATRIX_DTYPE_U8,
    MATRIX_HEADER_PIXELS,
    MATRIX_MARKER,
    REG,
    SIMM8,
    SIMM16,
    TARGET,
    UIMM5,
    WIDTH,
    Opcode,
)

DEFAULT_WIDTH = 64
_IDENT = r"[A-Za-z_.][A-Za-z0-9_.]*"
_LABEL_RE = re.compile(rf"^\s*({_IDENT})\s*:(?!:)")
_CONST_RE = re.compile(rf"^\s*({_IDENT})\s*=(?!=)\s*(.+)$")
_REG_RE = re.compile(r"^[rR]([0-9]{1,2})$")
_DATA_DIRECTIVES = {".byte", ".ascii", ".asciz", ".hex", ".incbin", ".zero", ".align"}
_NEUTRAL_DIRECTIVES = {".word", ".pixel"}  # join the section they appear in
_DIRECTIVES = {
    ".width",
    ".entry",
    ".threads",
    ".memory",
    ".const",
    ".default",
    ".include",
    ".matrix",
    ".qmatrix",
    *_DATA_DIRECTIVES,
    *_NEUTRAL_DIRECTIVES,
}


@dataclass
class _Stmt:
    file: str
    line: int
    op: str  # mnemonic or directive, lower-case
    args: list[str]
    labels: list[str] = field(default_factory=list)
    pc: int = 0
    size: int = 0
    payload: object = None  # pass-1 results (e.g. a quantized matrix)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _split_args(text: str) -> list[str]:
    """Split on commas outside quotes and parentheses."""
    out, cur, depth, quote = [], [], 0, None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            cur.append(c)
        elif c == "(":
            depth += 1
            cur.append(c)
        elif c == ")":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    last = "".join(cur).strip()
    if last or out:
        out.append(last)
    return out


def _strip_comment(line: str) -> str:
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote and line[i - 1] != "\\":
                quote = None
        elif c in "\"'":
            quote = c
        elif c == ";" or line.startswith("//", i):
            return line[:i]
    return line


class Assembler:
    def __init__(self) -> None:
        self.stmts: list[_Stmt] = []
        self.names: dict[
            str, tuple
        ] = {}  # ("label", pc) | ("const", expr, where) | ("define", int)
        self.meta = Meta()
        self.width = DEFAULT_WIDTH
        self._including: list[Path] = []
        self._evaluating: set[str] = set()
        self._label_where: dict[str, str] = {}

    # --- reading ------------------------------------------------------------------

    def read(self, path: Path, where: str = "") -> None:
        path = path.resolve()
        if path in self._including:
            chain = " -> ".join(p.name for p in [*self._including, path])
            raise AsmError(
                where or str(path), f"include cycle: {chain}; remove one of the .include lines."
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise AsmError(
                where or str(path), f"cannot read {path} ({e}); check the path."
            ) from None
        self._including.append(path)
        self.read_text(text, str(path))
        self._including.pop()

    def read_text(self, text: str, fname: str) -> None:
        pending: list[str] = []
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = _strip_comment(raw).strip()
            where = f"{fname}:{lineno}"
            while m := _LABEL_RE.match(line):
                pending.append(m.group(1))
                line = line[m.end() :].strip()
                self._define(m.group(1), ("label", None), where)
            if not line:
                continue
            if m := _CONST_RE.match(line):
                self._define(m.group(1), ("const", m.group(2).strip(), where), where)
                continue
            head, _, rest = line.partition(" ")
            op = head.strip().lower()
            args = _split_args(rest.strip())
            if op in (".const", ".default"):
                if len(args) != 1 or " " not in args[0].strip():
                    raise AsmError(
                        where,
                        f"usage: {op} NAME expr"
                        + (" (or NAME = expr)." if op == ".const" else "."),
                    )
                name, expr = args[0].strip().split(None, 1)
                if op == ".default" and self.names.get(name, ("",))[0] in ("define", "const"):
                    continue  # the caller's value (or an including file's) wins
                self._define(name, ("const", expr, where), where)
                continue
            if op == ".include":
                if len(args) != 1:
                    raise AsmError(where, 'usage: .include "file.pxs" (relative to this file).')
                inc = Path(fname).parent / self._string(args[0], where)
                if pending:  # labels before an include label its first statement
                    self.stmts.append(_Stmt(fname, lineno, ".label", [], pending))
                    pending = []
                self.read(inc, where)
                continue
            self.stmts.append(_Stmt(fname, lineno, op, args, pending))
            pending = []
        if pending:
            self.stmts.append(_Stmt(fname, len(text.splitlines()), ".label", [], pending))

    def _define(self, name: str, value: tuple, where: str) -> None:
        if _REG_RE.match(name):
            raise AsmError(where, f"'{name}' is a register name; choose another name.")
        if name in self.names:
            prev = self.names[name]
            if prev[0] == "define":
                raise AsmError(
                    where,
                    f"'{name}' is predefined by the caller (defines: {name}={prev[1]}) and "
                    f"defined here too; write `.default {name} expr` for a value the caller "
                    "may override, or rename one.",
                )
            prev_where = prev[2] if prev[0] == "const" else self._label_where.get(name, "?")
            raise AsmError(where, f"'{name}' is already defined (at {prev_where}); rename one.")
        self.names[name] = value
        if value[0] == "label":
            self._label_where[name] = where

    # --- expressions ----------------------------------------------------------------

    def eval(self, text: str, where: str) -> int:
        text = text.strip()
        if not text:
            raise AsmError(where, "missing operand.")
        if _REG_RE.match(text):
            raise AsmError(where, f"'{text}' is a register, but this operand is a number.")
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError:
            raise AsmError(where, f"cannot parse the expression '{text}'.") from None
        return self._ev(tree.body, text, where)

    def _ev(self, node: ast.AST, text: str, where: str) -> int:
        ops = {
            ast.Add: lambda a, b: a + b,
            ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b,
            ast.Div: lambda a, b: a // b,
            ast.FloorDiv: lambda a, b: a // b,
            ast.Mod: lambda a, b: a % b,
            ast.LShift: lambda a, b: a << b,
            ast.RShift: lambda a, b: a >> b,
            ast.BitAnd: lambda a, b: a & b,
            ast.BitOr: lambda a, b: a | b,
            ast.BitXor: lambda a, b: a ^ b,
        }
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                pass
            elif isinstance(node.value, int):
                return node.value
            elif isinstance(node.value, str) and len(node.value) == 1:
                return ord(node.value)
        elif isinstance(node, ast.BinOp) and type(node.op) in ops:
            a, b = self._ev(node.left, text, where), self._ev(node.right, text, where)
            if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
                raise AsmError(where, f"division by zero in '{text}'.")
            if isinstance(node.op, (ast.LShift, ast.RShift)) and not 0 <= b < 64:
                raise AsmError(where, f"shift by {b} in '{text}' (want 0..63).")
            return ops[type(node.op)](a, b)
        elif isinstance(node, ast.UnaryOp) and isinstance(
            node.op, (ast.USub, ast.UAdd, ast.Invert)
        ):
            v = self._ev(node.operand, text, where)
            return {ast.USub: -v, ast.UAdd: v, ast.Invert: ~v}[type(node.op)]
        elif isinstance(node, ast.Name):
            return self._lookup(node.id, where)
        elif isinstance(node, ast.Attribute):  # names with dots: a.b
            return self._lookup(ast.unparse(node), where)
        raise AsmError(
            where,
            f"unsupported expression '{text}' (integers, 'c', names, + - * / % << >> & | ^ ~).",
        )

    def _lookup(self, name: str, where: str) -> int:
        entry = self.names.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(self.names), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise AsmError(where, f"undefined name '{name}'.{hint}")
        if entry[0] == "define":
            return entry[1]
        if entry[0] == "label":
            if entry[1] is None:
                raise AsmError(
                    where,
                    f"label '{name}' is used where its value must already be known (a size or count); use a constant.",
                )
            return entry[1]
        if name in self._evaluating:
            raise AsmError(where, f"constant '{name}' is defined in terms of itself.")
        self._evaluating.add(name)
        try:
            return self.eval(entry[1], entry[2])
        finally:
            self._evaluating.discard(name)

    def _string(self, text: str, where: str) -> str:
        text = text.strip()
        if not (len(text) >= 2 and text[0] == text[-1] == '"'):
            raise AsmError(where, f'expected a "string", got {text!r}.')
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise AsmError(where, f"bad string literal {text}.") from None

    # --- pass 1: sizes and labels ---------------------------------------------------

    def place(self) -> int:
        pc = 0
        matrix_bytes_due = 0  # bytes a .qmatrix still expects from .hex lines
        matrix_stmt: _Stmt | None = None
        for s in self.stmts:
            for lab in s.labels:
                self.names[lab] = ("label", pc)
            s.pc = pc
            if matrix_bytes_due and s.op not in (".hex", ".label"):
                raise AsmError(
                    matrix_stmt.where,
                    f".qmatrix declares {matrix_stmt.payload[0]}x{matrix_stmt.payload[1]} bytes of data "
                    f"but only {matrix_stmt.payload[0] * matrix_stmt.payload[1] - matrix_bytes_due} follow "
                    f"in .hex lines before {s.where}; supply exactly rows*cols bytes.",
                )
            s.size = self._size(s, pc)
            if s.op == ".qmatrix":
                matrix_bytes_due, matrix_stmt = s.payload[0] * s.payload[1], s
            elif s.op == ".hex" and matrix_bytes_due:
                n = len(self._hex(s))
                if n > matrix_bytes_due:
                    raise AsmError(
                        s.where,
                        f"{n} bytes of .hex but the matrix of {matrix_stmt.where} needs only {matrix_bytes_due} more.",
                    )
                if n % 4 and n != matrix_bytes_due:
                    raise AsmError(
                        s.where,
                        "inside a matrix, each .hex line must hold a multiple of 4 bytes (except the last).",
                    )
                matrix_bytes_due -= n
                s.payload = "matrix-data"
            pc += s.size
            if pc > MAX_PIXELS:
                raise AsmError(s.where, f"the program exceeds {MAX_PIXELS} pixels.")
        if matrix_bytes_due:
            raise AsmError(
                matrix_stmt.where,
                f".qmatrix is missing {matrix_bytes_due} bytes of .hex data at the end of the file.",
            )
        return pc

    def _size(self, s: _Stmt, pc: int) -> int:
        op = s.op
        if op == ".label":
            return 0
        if not op.startswith("."):
            opc = BY_MNEMONIC.get(op)
            if opc is None:
                close = difflib.get_close_matches(op, list(BY_MNEMONIC), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise AsmError(
                    s.where, f"unknown mnemonic '{op}'.{hint} `pxi isa` lists the instruction set."
                )
            return opc.length
        if op not in _DIRECTIVES:
            close = difflib.get_close_matches(op, sorted(_DIRECTIVES), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise AsmError(s.where, f"unknown directive '{op}'.{hint}")
        if op in (".width", ".threads", ".memory"):
            v = self._one_int(s)
            if op == ".width":
                if not 1 <= v <= 16384:
                    raise AsmError(s.where, f".width {v}: want 1..16384 pixels.")
                self.width = v
            elif op == ".threads":
                if v < 1:
                    raise AsmError(s.where, ".threads must be >= 1.")
                self.meta.threads = v
            else:
                if v < 4 or v % 4:
                    raise AsmError(s.where, ".memory must be a positive multiple of 4 bytes.")
                self.meta.memory = v
            return 0
        if op == ".entry":
            return 0
        if op == ".byte":
            return (len(s.args) + 3) // 4
        if op in (".ascii", ".asciz"):
            return (len(self._text_bytes(s)) + 3) // 4
        if op == ".hex":
            return (len(self._hex(s)) + 3) // 4
        if op == ".incbin":
            s.payload = self._incbin(s)
            return (len(s.payload) + 3) // 4
        if op == ".word":
            return len(s.args)
        if op == ".pixel":
            return 1
        if op == ".zero":
            n = self._one_int(s)
            if n < 0:
                raise AsmError(s.where, ".zero takes a pixel count >= 0.")
            return n
        if op == ".align":
            n = self._one_int(s)
            if n < 1:
                raise AsmError(s.where, ".align takes a pixel count >= 1.")
            return (-pc) % n
        if op == ".matrix":
            s.payload = self._load_matrix(s)
            rows, cols = s.payload.shape
            return MATRIX_HEADER_PIXELS + (rows * cols + 3) // 4
        if op == ".qmatrix":
            if len(s.args) != 4:
                raise AsmError(
                    s.where,
                    "usage: .qmatrix rows, cols, scale_bits, offset_bits (then .hex data lines).",
                )
            rows, cols, sb, ob = (self.eval(a, s.where) for a in s.args)
            if rows < 1 or cols < 1 or rows >= 1 << 32 or cols >= 1 << 32:
                raise AsmError(
                    s.where, f".qmatrix {rows}x{cols}: rows and cols must be 1..2**32-1."
                )
            s.payload = (rows, cols, sb & 0xFFFFFFFF, ob & 0xFFFFFFFF)
            return MATRIX_HEADER_PIXELS
        raise AssertionError(op)

    def _one_int(self, s: _Stmt) -> int:
        if len(s.args) != 1:
            raise AsmError(s.where, f"{s.op} takes one number.")
        return self.eval(s.args[0], s.where)

    def _text_bytes(self, s: _Stmt) -> bytes:
        if len(s.args) != 1:
            raise AsmError(s.where, f'usage: {s.op} "text".')
        text = self._string(s.args[0], s.where)
        try:
            data = text.encode("latin-1")
        except UnicodeEncodeError:
            raise AsmError(
                s.where, "strings hold bytes: use characters below U+0100 or \\x escapes."
            ) from None
        return data + (b"\0" if s.op == ".asciz" else b"")

    def _hex(self, s: _Stmt) -> bytes:
        text = "".join(self._string(a, s.where) if a.strip().startswith('"') else a for a in s.args)
        text = re.sub(r"\s+", "", text)
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise AsmError(
                s.where, ".hex takes pairs of hex digits (whitespace allowed)."
            ) from None

    def _incbin(self, s: _Stmt) -> bytes:
        if len(s.args) != 1:
            raise AsmError(s.where, 'usage: .incbin "file" (its bytes, relative to this source).')
        path = Path(s.file).parent / self._string(s.args[0], s.where)
        try:
            return path.read_bytes()
        except OSError as e:
            raise AsmError(s.where, f"cannot read {path} ({e.strerror}).") from None

    def _load_matrix(self, s: _Stmt):
        if len(s.args) != 1:
            raise AsmError(
                s.where, 'usage: .matrix "file.npy" (a 1-D or 2-D float array; quantized to u8).'
            )
        path = Path(s.file).parent / self._string(s.args[0], s.where)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise AsmError(s.where, f"cannot load {path} as .npy ({e}).") from None
        if arr.dtype.kind not in "fiu":
            raise AsmError(s.where, f"{path}: dtype {arr.dtype} is not numeric.")
        try:
            return quantize(arr.astype(np.float32))
        except ValueError as e:
            raise AsmError(s.where, f"{path}: {e}.") from None

    # --- pass 2: encoding -----------------------------------------------------------

    def assemble(self) -> Program:
        total = self.place()
        npix = max(self.width, -(-total // self.width) * self.width)
        pixels = np.zeros(npix, np.uint32)
        chunks: list[tuple[int, int, str, _Stmt]] = []  # start, size, kind, stmt
        kind = None
        for s in self.stmts:
            words = self._encode(s, total)
            if words is None:
                continue
            words = np.asarray(words, dtype=np.uint32)
            assert words.size == s.size, (s.where, words.size, s.size)
            pixels[s.pc : s.pc + s.size] = words
            if s.op.startswith(".") and s.op not in _NEUTRAL_DIRECTIVES:
                kind = (
                    "matrix"
                    if s.op in (".matrix", ".qmatrix") or s.payload == "matrix-data"
                    else "data"
                )
            elif not s.op.startswith("."):
                kind = "code"
            chunks.append((s.pc, s.size, kind or "data", s))
        self.meta.sections = self._sections(chunks)
        files: dict[str, int] = {}
        runs = []
        for start, size, _k, s in chunks:
            if size:
                fi = files.setdefault(s.file, len(files))
                runs.append((start, fi, s.line))
        self.meta.src_files = list(files)
        self.meta.src_runs = runs
        self.meta.symbols = {n: v[1] for n, v in self.names.items() if v[0] == "label"}
        return Program(pixels, self.width, self.meta)

    def _sections(self, chunks) -> list[Section]:
        label_at: dict[int, list[str]] = {}
        for name, v in self.names.items():
            if v[0] == "label":
                label_at.setdefault(v[1], []).append(name)
        raw: list[list] = []  # [start, end, kind]
        for start, size, kind, s in chunks:
            if size == 0:
                continue
            new_matrix = s.op in (".matrix", ".qmatrix")
            if raw and raw[-1][2] == kind and raw[-1][1] == start and not new_matrix:
                raw[-1][1] = start + size
            else:
                raw.append([start, start + size, kind])
        out = []
        for start, end, kind in raw:
            names = [n for pc in range(start, end) if pc in label_at for n in sorted(label_at[pc])]
            if end - start > 4096:  # labels only matter near the start for naming
                names = [n for n in names if label_at.get(start) and n in label_at[start]] or names[
                    :1
                ]
            out.append(Section(names[0] if names else f"{kind}@{start}", kind, start, end))
        return out

    def _encode(self, s: _Stmt, total: int):
        op = s.op
        if op == ".label":
            return None
        if not op.startswith("."):
            return self._encode_instruction(BY_MNEMONIC[op], s, total)
        if op == ".entry":
            if len(s.args) != 1:
                raise AsmError(s.where, "usage: .entry label")
            pc = self.eval(s.args[0], s.where)
            if not 0 <= pc < total:
                raise AsmError(s.where, f".entry {pc} is outside the program (0..{total - 1}).")
            name = (
                s.args[0].strip()
                if re.fullmatch(_IDENT, s.args[0].strip())
                else f"entry{len(self.meta.entries)}"
            )
            self.meta.entries[name] = pc
            return None
        if op in (".width", ".threads", ".memory"):
            return None
        if op == ".byte":
            vals = [self._ranged(a, s, -128, 255, "a byte") & 0xFF for a in s.args]
            return pack_bytes(np.array(vals, np.uint8))
        if op in (".ascii", ".asciz"):
            return pack_bytes(np.frombuffer(self._text_bytes(s), np.uint8))
        if op == ".hex":
            return pack_bytes(np.frombuffer(self._hex(s), np.uint8))
        if op == ".incbin":
            return pack_bytes(np.frombuffer(s.payload, np.uint8))
        if op == ".word":
            return [
                self._ranged(a, s, -(1 << 31), (1 << 32) - 1, "a 32-bit word") & 0xFFFFFFFF
                for a in s.args
            ]
        if op == ".pixel":
            if len(s.args) != 4:
                raise AsmError(s.where, "usage: .pixel r, g, b, a (each 0..255 or 'c').")
            r, g, b, a = (self._ranged(x, s, 0, 255, "a channel") for x in s.args)
            return [r | g << 8 | b << 16 | a << 24]
        if op in (".zero", ".align"):
            return [0] * s.size
        if op == ".matrix":
            return s.payload.pixels()
        if op == ".qmatrix":
            rows, cols, sb, ob = s.payload
            return [ord(MATRIX_MARKER) | MATRIX_DTYPE_U8 << 8, rows, cols, sb, ob]
        raise AssertionError(op)

    def _ranged(self, text: str, s: _Stmt, lo: int, hi: int, what: str) -> int:
        v = self.eval(text, s.where)
        if not lo <= v <= hi:
            raise AsmError(s.where, f"{text.strip()} = {v} does not fit {what} ({lo}..{hi}).")
        return v

    def _reg(self, text: str, s: _Stmt) -> int:
        m = _REG_RE.match(text.strip())
        if not m or int(m.group(1)) > 15:
            raise AsmError(s.where, f"'{text.strip()}' is not a register (r0..r15).")
        return int(m.group(1))

    def _encode_instruction(self, opc: Opcode, s: _Stmt, total: int) -> list[int]:
        if len(s.args) != len(opc.operands):
            raise AsmError(
                s.where, f"{opc.mnemonic} takes {len(opc.operands)} operand(s): {opc.syntax}"
            )
        w, ext = opc.code, 0
        vals: dict[str, int] = {}
        for operand, text in zip(opc.operands, s.args, strict=True):
            k, f = operand.kind, operand.field
            if k == REG:
                v = self._reg(text, s)
            elif k == SIMM8:
                v = self._ranged(text, s, -128, 127, f"{opc.mnemonic}'s {operand.name}") & 0xFF
            elif k == UIMM5:
                v = self._ranged(text, s, 0, 31, "a shift amount")
            elif k == SIMM16:
                v = self.eval(text, s.where)
                if not -32768 <= v <= 32767:
                    raise AsmError(
                        s.where,
                        f"{text.strip()} = {v} does not fit li's 16-bit immediate (-32768..32767); use li32.",
                    )
                v &= 0xFFFF
            elif k == IMM32:
                v = (
                    self._ranged(text, s, -(1 << 31), (1 << 32) - 1, "a 32-bit immediate")
                    & 0xFFFFFFFF
                )
            elif k == TARGET:
                v = self.eval(text, s.where)
                if not 0 <= v < total:
                    raise AsmError(
                        s.where,
                        f"branch target {text.strip()} = {v} is outside the program (0..{total - 1}).",
                    )
            elif k == WIDTH:
                v = self.eval(text, s.where)
                if v not in opc.widths:
                    raise AsmError(
                        s.where,
                        f"{opc.mnemonic} width {v}: want one of {', '.join(map(str, opc.widths))} (bits).",
                    )
            else:
                raise AssertionError(k)
            vals[operand.name] = v
            if f == "X":
                ext = v
            elif f == "XR":
                ext |= v
            else:
                w |= v << {"G": 8, "B": 16, "A": 24, "BA": 16}[f]
        self._check_pairs(opc, s)
        return [w, ext] if opc.length == 2 else [w]

    def _check_pairs(self, opc: Opcode, s: _Stmt) -> None:
        """MMIO addresses (and 64-bit values) live in register pairs rN, rN+1."""
        if opc.mnemonic not in ("mrd", "mwr"):
            return
        regs = [self._reg(a, s) for a in s.args[:2]]
        width = self.eval(s.args[2], s.where)
        addr = regs[1] if opc.mnemonic == "mrd" else regs[0]
        if addr > 14:
            raise AsmError(
                s.where,
                f"{opc.mnemonic}: the address is the pair r{addr}, r{addr + 1}; use r0..r14.",
            )
        if width == 64:
            val = regs[0] if opc.mnemonic == "mrd" else regs[1]
            if val > 14:
                raise AsmError(
                    s.where,
                    f"{opc.mnemonic} 64: the value is the pair r{val}, r{val + 1}; use r0..r14.",
                )

    def predefine(self, defines: dict[str, int]) -> None:
        """Constants the caller gives before any source is read (docs/pxi.md)."""
        for name, value in defines.items():
            where = f"defines[{name!r}]"
            if not isinstance(name, str) or not re.fullmatch(_IDENT, name):
                raise AsmError(where, f"{name!r} is not a name (letters, digits, _ and .).")
            if isinstance(value, bool) or not isinstance(value, int):
                raise AsmError(where, f"the value {value!r} is not an integer.")
            if _REG_RE.match(name):
                raise AsmError(where, f"'{name}' is a register name; choose another name.")
            self.names[name] = ("define", value)


def assemble_file(path: str | Path, defines: dict[str, int] | None = None) -> Program:
    """Assemble a .pxs file.  `defines`: predefined constants, usable like `.const`;
    the source may give defaults with `.default NAME expr`, and defining a predefined
    name with `.const`/`=` or as a label is an error."""
    a = Assembler()
    a.predefine(defines or {})
    a.read(Path(path))
    prog = a.assemble()
    prog.name = str(path)
    return prog


def assemble_text(
    text: str, fname: str = "<source>", defines: dict[str, int] | None = None
) -> Program:
    a = Assembler()
    a.predefine(defines or {})
    a.read_text(text, fname)
    prog = a.assemble()
    prog.name = fname
    return prog
