"""The executor interface shared by the NumPy and wgpu backends.

An executor runs one Program on N threads over a data memory (bytes, a multiple of 4)
that its caller may read and write between runs.  The caller drives it:

    ex = create("wgpu", program, threads=4, memory_bytes=65536)
    ex.write_memory(0x100, b"...")          # e.g. a DMA buffer
    res = ex.run(step_budget=1_000_000)     # until every thread is blocked/halted/out of budget
    for req in res.requests:                # new requests, ordered by thread id
        ...                                 # (a thread's posted writes before its request)
    ex.respond([Response(req.thread, value=0x60), Response(t2, deny=True),
                Response(t3, posted=True)])  # t3's oldest posted write was carried out
    state = ex.state()                      # pc, status, registers, steps, ... per thread

Executors know nothing about devices: ``pxi.devices`` is one caller, the vGPU bridge
another.  docs/pxi.md ("Machine model", "Executor interface") specifies the semantics
both backends implement identically.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .disasm import decode, describe
from .errors import ProgramFault
from .image import Program
from .machine import (
    CALL_DEPTH,
    MAX_BUDGET,
    MAX_MEMORY,
    NREGS,
    FaultCode,
    MatrixProblem,
    RequestKind,
    Status,
)
from .matrix import PROBLEM_TEXT


@dataclass(frozen=True)
class Request:
    """Something a thread asked the host to do; the thread is blocked until answered,
    unless the request is posted (outp, mwrp: a write the thread does not wait for)."""

    thread: int
    pc: int
    kind: RequestKind
    width: int  # bits: 8, 16, 32 or 64 (0 for WAIT_EVENT)
    address: int  # port number, MMIO address (64-bit) or event selector
    value: int  # the value to write (PORT_OUT, MMIO_WRITE), else 0
    posted: bool = False  # the thread went on; answer it with Response(posted=True)

    def __str__(self) -> str:
        k = self.kind.name.lower()
        v = (
            f" value=0x{self.value:x}"
            if self.kind in (RequestKind.PORT_OUT, RequestKind.MMIO_WRITE)
            else ""
        )
        w = f"{self.width} " if self.width else ""
        p = "posted " if self.posted else ""
        return f"thread {self.thread} pc {self.pc}: {p}{k} {w}address=0x{self.address:x}{v}"


@dataclass(frozen=True)
class Response:
    """The host's answer: a value (ignored for writes) or DENY.  posted=True answers the
    thread's oldest unanswered posted write instead of its pending request."""

    thread: int
    value: int = 0
    deny: bool = False
    posted: bool = False


@dataclass(frozen=True)
class Fault:
    thread: int
    pc: int
    code: FaultCode
    d0: int
    d1: int

    def message(self, program: Program) -> str:
        return fault_message(self, program)


@dataclass
class MachineState:
    """The full per-thread machine state (what conformance compares)."""

    pc: np.ndarray  # u32[T]
    status: np.ndarray  # u32[T]
    steps: np.ndarray  # u64[T], instructions executed since construction
    regs: np.ndarray  # u32[T, 16]
    sp: np.ndarray  # u32[T]
    stack: np.ndarray  # u32[T, 8]
    fault: np.ndarray  # u32[T, 3]: code, d0, d1
    request: (
        np.ndarray
    )  # u32[T, 6]: kind, width, addr lo, addr hi, value lo, value hi (last request)
    posted: np.ndarray  # u32[T]: posted writes issued and not yet answered

    FIELDS = ("pc", "status", "steps", "regs", "sp", "stack", "fault", "request", "posted")

    def diff(self, other: MachineState) -> list[str]:
        """Human-readable differences (empty when identical)."""
        out = []
        for name in self.FIELDS:
            a, b = getattr(self, name), getattr(other, name)
            if a.shape != b.shape or not np.array_equal(a, b):
                bad = np.argwhere(a != b) if a.shape == b.shape else [["shape"]]
                out.append(f"{name} differs at {bad[:4].tolist()} (first of {len(bad)})")
        return out


@dataclass
class RunResult:
    requests: list[Request]  # issued during this run, ordered by thread
    faults: list[Fault]  # threads that faulted during this run, ordered by thread
    steps: int  # instructions executed during this run, all threads
    counts: dict[str, int] = field(default_factory=dict)  # threads per final status
    out_of_budget: int = 0  # runnable threads stopped by the budget
    max_thread_steps: int = 0  # the most instructions any one thread executed this run
    dispatches: int = 0  # interpreter rounds/dispatches this run took

    @property
    def finished(self) -> bool:
        """True when no thread can ever run again (all halted or faulted)."""
        return (
            self.counts.get("RUNNABLE", 0)
            + self.counts.get("BLOCKED", 0)
            + self.counts.get("BARRIER", 0)
            + self.counts.get("YIELDED", 0)
            == 0
        )


class Executor(ABC):
    """Common construction, validation and response logic; backends do the rest."""

    backend = "?"

    def __init__(
        self,
        program: Program,
        threads: int,
        memory_bytes: int,
        entry: int | None = None,
        profile: bool = False,
    ):
        if threads < 1:
            raise ValueError("threads must be >= 1")
        if memory_bytes < 4 or memory_bytes % 4 or memory_bytes > MAX_MEMORY:
            raise ValueError(f"memory_bytes must be a positive multiple of 4 up to {MAX_MEMORY}")
        self.program = program
        self.threads = threads
        self.memory_bytes = memory_bytes
        self.entry = program.entry if entry is None else entry
        self.profile = profile
        self._pending: dict[int, Request] = {}
        self._posted: dict[int, deque[Request]] = {}  # per thread, oldest first
        self._dead: set[int] = set()  # threads a refused posted write faulted

    # --- what backends implement ------------------------------------------------------

    @abstractmethod
    def _run(self, step_budget: int) -> RunResult: ...

    @abstractmethod
    def _apply_effects(self, effects: np.ndarray) -> None:
        """Apply response effects (rows of EFFECT_FIELDS, ascending thread)."""

    @abstractmethod
    def state(self) -> MachineState: ...

    @abstractmethod
    def read_memory(self, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def write_memory(self, offset: int, data: bytes) -> None: ...

    def profile_counts(self) -> np.ndarray:
        """Per-pixel execution counts (u64[npix]); needs profile=True."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.backend

    # --- the public API -----------------------------------------------------------------

    def run(self, step_budget: int) -> RunResult:
        """Run until every thread is blocked, halted, faulted, at an unreleased barrier or
        has used step_budget instructions in this call.  Returns the new requests."""
        if not 0 <= step_budget <= MAX_BUDGET:
            raise ValueError(f"step_budget must be 0..{MAX_BUDGET}")
        res = self._run(step_budget)
        for r in res.requests:
            if r.posted:
                self._posted.setdefault(r.thread, deque()).append(r)
            else:
                self._pending[r.thread] = r
        return res

    def pending(self) -> list[Request]:
        """Every request still waiting for a response, ordered by thread."""
        return [self._pending[t] for t in sorted(self._pending)]

    def posted(self) -> list[Request]:
        """Every posted write not yet answered, by thread, oldest first."""
        return [r for t in sorted(self._posted) for r in self._posted[t]]

    def respond(self, responses: Iterable[Response]) -> list[Fault]:
        """Answer pending requests.  A value resumes the thread after the request
        instruction; DENY faults it (FaultCode.DENIED).  A posted answer gives the thread
        its posting credit back; a posted DENY faults the thread at the refused write,
        wherever it has got to since, and its later answers are ignored.  Returns the
        DENY faults."""
        rows, faults = {}, []
        for resp in responses:
            row, fault = self._answer(resp)
            if fault is not None:
                faults.append(fault)
            if row is None:
                continue
            t = row[0]
            # One row per thread (the GPU applies rows in parallel): credits add up, a
            # resuming response or a fault replaces the thread's pc and status.
            if t in rows:
                row[_CREDIT] += rows[t][_CREDIT]
                if row[_KEEP] and not rows[t][_KEEP]:
                    row = [*rows[t][:_CREDIT], row[_CREDIT], 0]
            rows[t] = row
        rows = [rows[t] for t in sorted(rows)]
        if rows:
            self._apply_effects(np.array(rows, dtype=np.uint32).reshape(-1, len(EFFECT_FIELDS)))
        return sorted(faults, key=lambda f: f.thread)

    def _answer(self, resp: Response) -> tuple[list[int] | None, Fault | None]:
        t = resp.thread
        if t in self._dead:
            # A refused posted write faulted it; what it asked after that was carried
            # out by the host but no longer matters to it (its `posted` count stays).
            if resp.posted and self._posted.get(t):
                self._posted[t].popleft()
            elif not resp.posted:
                self._pending.pop(t, None)
            return None, None
        if not resp.posted:
            req = self._pending.pop(t, None)
            if req is None:
                raise ValueError(f"thread {t} has no pending request to respond to")
            row = response_effect(self.program, req, resp)
            fault = Fault(t, req.pc, FaultCode.DENIED, row[8], row[9]) if resp.deny else None
            return row, fault
        queue = self._posted.get(t)
        if not queue:
            raise ValueError(f"thread {t} has no posted write to answer")
        req = queue.popleft()
        if not resp.deny:
            return [t, 0, 0, NO_REG, 0, NO_REG, 0, 0, 0, 0, 1, 1], None
        self._dead.add(t)
        self._pending.pop(t, None)
        row = response_effect(self.program, req, resp)
        row[_CREDIT] = 1
        return row, Fault(t, req.pc, FaultCode.DENIED, row[8], row[9])


# A response effect: what a response does to its thread, computed once here so both
# backends apply exactly the same change.  reg = NO_REG when nothing is written.
EFFECT_FIELDS = (
    "thread",
    "pc",
    "status",
    "reg",
    "val_lo",
    "reg2",
    "val_hi",
    "fault",
    "fd0",
    "fd1",
    "credit",  # posted writes answered: the thread's POSTED count drops by this
    "keep",  # 1: pc, status and fault stay as they are (only credits come back)
)
NO_REG = 0xFFFFFFFF
_CREDIT, _KEEP = EFFECT_FIELDS.index("credit"), EFFECT_FIELDS.index("keep")


def response_effect(program: Program, req: Request, resp: Response) -> list[int]:
    if resp.deny:
        d0 = int(req.kind) << 8 | req.width
        return [
            req.thread,
            req.pc,
            Status.FAULTED,
            NO_REG,
            0,
            NO_REG,
            0,
            FaultCode.DENIED,
            d0,
            req.address & 0xFFFFFFFF,
            0,
            0,
        ]
    d = decode(program.pixels, req.pc)
    assert d is not None, "a request instruction always decodes"
    reg, reg2, lo, hi = NO_REG, NO_REG, 0, 0
    v = resp.value
    if req.kind in (RequestKind.PORT_IN, RequestKind.MMIO_READ, RequestKind.WAIT_EVENT):
        width = req.width or 32
        if not 0 <= v < (1 << width):
            raise ValueError(
                f"response value 0x{v:x} does not fit the {width}-bit request of thread {req.thread}"
            )
        reg, lo = d.field("rd"), v & 0xFFFFFFFF
        if width == 64:
            reg2, hi = reg + 1, v >> 32
    return [req.thread, req.pc + 1, Status.RUNNABLE, reg, lo, reg2, hi, 0, 0, 0, 0, 0]


def check_entry(program: Program, entry: int) -> None:
    if not 0 <= entry < program.npix:
        raise ValueError(f"entry pc {entry} outside the program (0..{program.npix - 1})")


def empty_state(threads: int, entry: int) -> MachineState:
    return MachineState(
        pc=np.full(threads, entry, np.uint32),
        status=np.zeros(threads, np.uint32),
        steps=np.zeros(threads, np.uint64),
        regs=np.zeros((threads, NREGS), np.uint32),
        sp=np.zeros(threads, np.uint32),
        stack=np.zeros((threads, CALL_DEPTH), np.uint32),
        fault=np.zeros((threads, 3), np.uint32),
        request=np.zeros((threads, 6), np.uint32),
        posted=np.zeros(threads, np.uint32),
    )


def status_counts(status: np.ndarray) -> dict[str, int]:
    return {s.name: int(np.count_nonzero(status == s)) for s in Status if s != Status.NEURAL}


# --- fault messages (one formatter, so both backends print the same text) -------------

_SPACE = {"lp8": "program image", "lp32": "program image"}


def fault_message(f: Fault, program: Program) -> str:
    x, y = program.xy(f.pc)
    src = program.meta.source_of(f.pc)
    at = f"thread {f.thread}: pc {f.pc} (pixel x={x}, y={y})"
    if src:
        at += f" [{src}]"
    ins = describe(program.pixels, f.pc)
    d = decode(program.pixels, f.pc)
    mn = d.op.mnemonic if d else None
    c, d0, d1 = f.code, f.d0, f.d1
    if c == FaultCode.UNKNOWN_OPCODE:
        r = d0 & 0xFF
        ch = f"'{chr(r)}'" if 0x20 <= r < 0x7F else f"0x{r:02x}"
        extra = " (a quantized-matrix header: data, not code)" if ch == "'Q'" else ""
        why = (
            f"unknown opcode {ch} in pixel 0x{d0:08x}{extra}; execution ran into data or a "
            "corrupt pixel -- check the jump that led here."
        )
    elif c == FaultCode.BAD_ENCODING:
        part = "extension pixel" if d1 else "pixel"
        why = (
            f"bad encoding of {ins if d1 == 0 else 'the instruction'} ({part} 0x{d0:08x}): "
            "a register field above r15, a register pair starting at r15, a width the "
            "instruction does not take, a shift above 31 or a non-zero unused field; "
            "re-assemble the source (`pxi disasm` shows the pixel)."
        )
    elif c == FaultCode.PC_RANGE:
        if d1 == 0:
            why = f"pc {d0} is outside the program ({program.npix} pixels): execution fell off the end -- add a halt."
        elif d1 == 1:
            why = f"{ins} jumps to pc {d0}, outside the program (0..{program.npix - 1})."
        else:
            why = f"{ins.split(' ')[0]} needs an extension pixel at pc {d0}, past the end of the image."
    elif c == FaultCode.MISALIGNED:
        space = _SPACE.get(mn, "data memory")
        why = f"{ins}: misaligned {d1 * 8}-bit access to {space} address 0x{d0:x} (must be a multiple of {d1})."
    elif c == FaultCode.OUT_OF_BOUNDS:
        if mn in ("lp8", "lp32"):
            why = f"{ins}: image byte address 0x{d0:x} (+{d1}) is outside the image ({program.npix * 4} bytes)."
        elif d and d.op.group == "neural":
            why = f"{ins}: a tensor of {d1} float32 at data address 0x{d0:x} does not fit in data memory."
        else:
            why = f"{ins}: data address 0x{d0:x} (+{d1} bytes) is outside data memory."
    elif c == FaultCode.CALL_OVERFLOW:
        why = f"{ins}: call stack overflow (depth {d0}, the limit is {CALL_DEPTH}); check for runaway recursion."
    elif c == FaultCode.RET_UNDERFLOW:
        why = f"{ins}: return with an empty call stack."
    elif c == FaultCode.BAD_PORT:
        why = f"{ins}: port 0x{d0:x} is not an I/O port (0..0xffff)."
    elif c == FaultCode.BAD_MATRIX:
        hx, hy = program.xy(d0) if d0 < program.npix else (d0 % program.width, d0 // program.width)
        text = (
            PROBLEM_TEXT.get(MatrixProblem(d1), "is invalid")
            if d1 in MatrixProblem._value2member_map_
            else "is invalid"
        )
        why = f"{ins}: the matrix header at pc {d0} (pixel x={hx}, y={hy}) {text}."
    elif c == FaultCode.SHAPE:
        if mn == "embed":
            why = f"{ins}: token {d0} is outside the embedding's {d1} rows."
        elif mn == "addmat":
            why = f"{ins}: the bias matrix has {d0} rows; it must have 1 or rows={d1}."
        else:
            why = f"{ins}: an empty vector (n = 0)."
    elif c == FaultCode.OVERLAP:
        why = f"{ins}: the output at 0x{d0:x} overlaps the input at 0x{d1:x} (only an exact in-place op is allowed)."
    elif c == FaultCode.DENIED:
        kind = (
            RequestKind(d0 >> 8).name.lower()
            if (d0 >> 8) in RequestKind._value2member_map_
            else "?"
        )
        why = (
            f"{ins}: the host denied the {kind} request ({d0 & 0xFF}-bit, address 0x{d1:x}); "
            "the broker only allows devices it enumerated."
        )
    else:
        why = f"fault {c} ({d0:#x}, {d1:#x})"
    return f"{at}: {why}"


def raise_for_faults(faults: list[Fault], program: Program) -> None:
    if faults:
        more = f" ({len(faults) - 1} more thread(s) faulted)" if len(faults) > 1 else ""
        raise ProgramFault(fault_message(faults[0], program) + more)


def runaway_message(state: MachineState, program: Program, budget: int) -> str:
    running = np.flatnonzero(state.status == Status.RUNNABLE)
    t = int(running[0])
    pc = int(state.pc[t])
    x, y = program.xy(pc)
    return (
        f"thread {t}: pc {pc} (pixel x={x}, y={y}): still running after {int(state.steps[t])} steps "
        f"(budget {budget}), {len(running)} thread(s) in all -- a runaway loop? Raise --max-steps if the "
        f"program really needs more, or check the loop at {describe(program.pixels, pc)}."
    )
