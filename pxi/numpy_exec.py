"""The NumPy executor: the reference implementation of the PXI machine.

Readable first: one method per instruction, named after its mnemonic, each written for a
vector of threads that execute that instruction in the same step (SIMT).  Fast second:
executing all active threads a step at a time makes thousands of threads cheap.

Within a step threads are independent; what other threads observe of a step is only
defined for race-free programs (docs/pxi.md, "Memory and races"), so this lock-step
schedule and the wgpu executor's free-running threads give identical results.
"""

from __future__ import annotations

import sys

import numpy as np

from .executor import (
    EFFECT_FIELDS,
    NO_REG,
    Executor,
    Fault,
    MachineState,
    Request,
    RunResult,
    check_entry,
    empty_state,
    status_counts,
)
from .image import Program
from .machine import CALL_DEPTH, POST_CREDITS, FaultCode, RequestKind, Status
from .matrix import dequantize, read_header
from .opcodes import BY_CHAR, OPCODES

F = FaultCode
U32 = np.uint32
MASK32 = 0xFFFFFFFF
_E = {name: i for i, name in enumerate(EFFECT_FIELDS)}
assert sys.byteorder == "little", "pixel and memory views assume a little-endian host"


class _Fields:
    """Decoded operand fields of a group of threads executing the same opcode."""

    __slots__ = ("w", "x", "g", "b", "a")

    def __init__(self, w: np.ndarray, x: np.ndarray | None):
        self.w, self.x = w, x
        self.g = ((w >> 8) & 0xFF).astype(np.intp)
        self.b = ((w >> 16) & 0xFF).astype(np.intp)
        self.a = (w >> 24).astype(np.intp)

    def sub(self, m: np.ndarray) -> _Fields:
        f = _Fields.__new__(_Fields)
        f.w, f.g, f.b, f.a = self.w[m], self.g[m], self.b[m], self.a[m]
        f.x = None if self.x is None else self.x[m]
        return f


def _sext(v: np.ndarray, bits: int) -> np.ndarray:
    v = v.astype(np.int64)
    return ((v ^ (1 << (bits - 1))) - (1 << (bits - 1))) & MASK32


class NumpyExecutor(Executor):
    backend = "numpy"

    def __init__(
        self,
        program: Program,
        threads: int,
        memory_bytes: int,
        entry=None,
        profile=False,
        memory=None,
    ):
        """memory: optionally a caller-owned u32 array (e.g. a view of shared memory)
        used as data memory without copying."""
        super().__init__(program, threads, memory_bytes, entry, profile)
        check_entry(program, self.entry)
        self.px = program.pixels
        self.npix = program.npix
        self.img = self.px.view(np.uint8)
        if memory is None:
            memory = np.zeros(memory_bytes // 4, U32)
        if memory.dtype != U32 or memory.size * 4 != memory_bytes:
            raise ValueError("memory must be a uint32 array of memory_bytes / 4 words")
        self.mem = memory
        self.memb = memory.view(np.uint8)
        self.memf = memory.view(np.float32)
        s = empty_state(threads, self.entry)
        self.pc, self.status, self.steps, self.regs = s.pc, s.status, s.steps, s.regs
        self.sp, self.stack, self.fault, self.request = s.sp, s.stack, s.fault, s.request
        self.posted_n = s.posted
        self.new_posted: list[Request] = []  # posted writes of this run, in issue order
        self.budget = np.zeros(threads, np.int64)
        self.prof = np.zeros(self.npix, np.uint64) if profile else None
        # Every opcode of the table must have a handler (a missing one fails here).
        self.handlers = {op.code: (op, getattr(self, "_op_" + op.mnemonic)) for op in OPCODES}

    # --- the run loop ---------------------------------------------------------------

    def _run(self, step_budget: int) -> RunResult:
        st = self.status
        self.budget[:] = step_budget
        blocked0 = st == Status.BLOCKED
        faulted0 = st == Status.FAULTED
        steps0 = int(self.steps.sum())
        self.new_posted = []
        rounds = 0
        while True:
            st[st == Status.YIELDED] = Status.RUNNABLE  # a new round
            active = self._active()
            if active.size == 0:
                live = (st != Status.HALTED) & (st != Status.FAULTED)
                at_barrier = st == Status.BARRIER
                if at_barrier.any() and np.array_equal(at_barrier, live):
                    st[at_barrier] = Status.RUNNABLE  # everyone arrived: release
                    continue
                break
            rounds += 1
            while active.size:
                self._step(active)
                active = self._active()
        new_req = np.flatnonzero((st == Status.BLOCKED) & ~blocked0)
        new_fault = np.flatnonzero((st == Status.FAULTED) & ~faulted0)
        # Per thread: its posted writes in the order it issued them, then the request it
        # blocked on (always its last: a blocked thread issues nothing more).
        reqs = sorted(self.new_posted, key=lambda r: r.thread)
        reqs += [self._request(int(t)) for t in new_req]
        return RunResult(
            requests=sorted(reqs, key=lambda r: (r.thread, not r.posted)),
            faults=[
                Fault(
                    int(t),
                    int(self.pc[t]),
                    F(int(self.fault[t, 0])),
                    int(self.fault[t, 1]),
                    int(self.fault[t, 2]),
                )
                for t in new_fault
            ],
            steps=int(self.steps.sum()) - steps0,
            counts=status_counts(st),
            out_of_budget=int(np.count_nonzero((st == Status.RUNNABLE) & (self.budget <= 0))),
            max_thread_steps=int(step_budget - self.budget.min()),
            dispatches=rounds,
        )

    def _active(self) -> np.ndarray:
        return np.flatnonzero((self.status == Status.RUNNABLE) & (self.budget > 0))

    def _step(self, t: np.ndarray) -> None:
        pcs = self.pc[t]
        off = pcs >= self.npix
        if off.any():  # fetch outside the image: no step is counted
            self._fault(t[off], F.PC_RANGE, pcs[off], 0)
            t, pcs = t[~off], pcs[~off]
            if not t.size:
                return
        w = self.px[pcs]
        self.steps[t] += 1
        self.budget[t] -= 1
        if self.prof is not None:
            np.add.at(self.prof, pcs, 1)
        ops = w & 0xFF
        if ops.min() == ops.max():
            self._execute(int(ops[0]), t, w)
        else:
            for code in np.unique(ops):
                m = ops == code
                self._execute(int(code), t[m], w[m])

    def _execute(self, code: int, t: np.ndarray, w: np.ndarray) -> None:
        entry = self.handlers.get(code)
        if entry is None:
            self._fault(t, F.UNKNOWN_OPCODE, w, 0)
            return
        op, handler = entry
        f = _Fields(w, None)
        ok = ((w & op.mz) == 0) & self._encoding_ok(op, f)
        if not ok.all():
            self._fault(t[~ok], F.BAD_ENCODING, w[~ok], 0)
            t, f = t[ok], f.sub(ok)
            if not t.size:
                return
        if op.length == 2:
            p1 = self.pc[t].astype(np.int64) + 1
            miss = p1 >= self.npix
            if miss.any():
                self._fault(t[miss], F.PC_RANGE, p1[miss], 2)
                t, f, p1 = t[~miss], f.sub(~miss), p1[~miss]
                if not t.size:
                    return
            f.x = self.px[p1]
            badx = (f.x & op.ext_mz) != 0
            if badx.any():
                self._fault(t[badx], F.BAD_ENCODING, f.x[badx], 1)
                t, f = t[~badx], f.sub(~badx)
                if not t.size:
                    return
        handler(t, f)

    @staticmethod
    def _encoding_ok(op, f: _Fields) -> np.ndarray:
        ok = np.ones(f.w.shape, bool)
        if op.widths:
            ok &= np.isin(f.a, op.widths)
        if op.mnemonic == "mrd":
            ok &= (f.b <= 14) & ~((f.a == 64) & (f.g > 14))
        elif op.mnemonic in ("mwr", "mwrp"):
            ok &= (f.g <= 14) & ~((f.a == 64) & (f.b > 14))
        return ok

    # --- helpers ----------------------------------------------------------------------

    def _fault(self, t, code: FaultCode, d0, d1) -> None:
        self.status[t] = Status.FAULTED
        self.fault[t, 0] = code
        self.fault[t, 1] = np.asarray(d0, dtype=np.int64) & MASK32
        self.fault[t, 2] = np.asarray(d1, dtype=np.int64) & MASK32

    def _set(self, t, f: _Fields, value, length: int = 1) -> None:
        self.regs[t, f.g] = np.asarray(value).astype(np.int64) & MASK32
        self.pc[t] += length

    def _r(self, t, idx) -> np.ndarray:
        return self.regs[t, idx]

    def _access_ok(self, t, addr: np.ndarray, size: int, limit: int) -> np.ndarray:
        """Alignment, then bounds; faults the threads that fail, returns the ok mask."""
        mis = (addr & (size - 1)) != 0
        if mis.any():
            self._fault(t[mis], F.MISALIGNED, addr[mis], size)
        oob = ~mis & ((addr >= limit) | (limit - addr < size))
        if oob.any():
            self._fault(t[oob], F.OUT_OF_BOUNDS, addr[oob], size)
        return ~(mis | oob)

    def _addr(self, t, f: _Fields) -> np.ndarray:
        return (self._r(t, f.b).astype(np.int64) + _sext(f.a, 8)) & MASK32

    def _jump(self, t, target: np.ndarray) -> None:
        bad = target >= self.npix
        if bad.any():
            self._fault(t[bad], F.PC_RANGE, target[bad], 1)
        self.pc[t[~bad]] = target[~bad]

    # --- control ------------------------------------------------------------------------

    def _op_halt(self, t, f):
        self.status[t] = Status.HALTED

    def _op_nop(self, t, f):
        self.pc[t] += 1

    def _op_yield(self, t, f):
        self.pc[t] += 1
        self.status[t] = Status.YIELDED

    def _op_barrier(self, t, f):
        self.pc[t] += 1
        self.status[t] = Status.BARRIER

    def _op_jmp(self, t, f):
        self._jump(t, f.x)

    def _op_call(self, t, f):
        bad = f.x >= self.npix
        if bad.any():
            self._fault(t[bad], F.PC_RANGE, f.x[bad], 1)
        t, target = t[~bad], f.x[~bad]
        full = self.sp[t] >= CALL_DEPTH
        if full.any():
            self._fault(t[full], F.CALL_OVERFLOW, self.sp[t[full]], 0)
        t, target = t[~full], target[~full]
        self.stack[t, self.sp[t]] = self.pc[t] + 2
        self.sp[t] += 1
        self.pc[t] = target

    def _op_ret(self, t, f):
        empty = self.sp[t] == 0
        if empty.any():
            self._fault(t[empty], F.RET_UNDERFLOW, 0, 0)
        t = t[~empty]
        self.sp[t] -= 1
        self.pc[t] = self.stack[t, self.sp[t]]

    def _op_jr(self, t, f):
        self._jump(t, self._r(t, f.g))

    def _branch(self, t, f, taken: np.ndarray) -> None:
        self.pc[t[~taken]] += 2
        self._jump(t[taken], f.x[taken])

    def _op_beq(self, t, f):
        self._branch(t, f, self._r(t, f.g) == self._r(t, f.b))

    def _op_bne(self, t, f):
        self._branch(t, f, self._r(t, f.g) != self._r(t, f.b))

    def _op_blt(self, t, f):
        self._branch(t, f, self._r(t, f.g).view(np.int32) < self._r(t, f.b).view(np.int32))

    def _op_bge(self, t, f):
        self._branch(t, f, self._r(t, f.g).view(np.int32) >= self._r(t, f.b).view(np.int32))

    def _op_bltu(self, t, f):
        self._branch(t, f, self._r(t, f.g) < self._r(t, f.b))

    def _op_bgeu(self, t, f):
        self._branch(t, f, self._r(t, f.g) >= self._r(t, f.b))

    def _op_bz(self, t, f):
        self._branch(t, f, self._r(t, f.g) == 0)

    def _op_bnz(self, t, f):
        self._branch(t, f, self._r(t, f.g) != 0)

    # --- ALU (uint32 arithmetic wraps like the GPU's) -----------------------------------

    def _ra_rb(self, t, f):
        return self._r(t, f.b), self._r(t, f.a)

    def _op_add(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, a + b)

    def _op_sub(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, a - b)

    def _op_mul(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, a * b)

    def _op_and(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, a & b)

    def _op_or(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, a | b)

    def _op_xor(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, a ^ b)

    def _op_shl(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, a << (b & U32(31)))

    def _op_shr(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, a >> (b & U32(31)))

    def _op_sar(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, (a.view(np.int32) >> (b & U32(31)).astype(np.int32)).view(U32))

    def _op_seq(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, (a == b).astype(U32))

    def _op_slt(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, (a.view(np.int32) < b.view(np.int32)).astype(U32))

    def _op_sltu(self, t, f):
        a, b = self._ra_rb(t, f)
        self._set(t, f, (a < b).astype(U32))

    def _op_mov(self, t, f):
        self._set(t, f, self._r(t, f.b))

    def _op_addi(self, t, f):
        self._set(t, f, self._r(t, f.b).astype(np.int64) + _sext(f.a, 8))

    def _op_shli(self, t, f):
        self._set(t, f, self._r(t, f.b) << f.a.astype(U32))

    def _op_shri(self, t, f):
        self._set(t, f, self._r(t, f.b) >> f.a.astype(U32))

    def _op_li(self, t, f):
        self._set(t, f, _sext(f.w >> 16, 16))

    def _op_li32(self, t, f):
        self._set(t, f, f.x, length=2)

    def _op_tid(self, t, f):
        self._set(t, f, t.astype(U32))

    def _op_nthreads(self, t, f):
        self._set(t, f, np.full(t.shape, self.threads, U32))

    # --- memory ---------------------------------------------------------------------------

    def _load(self, t, f, size: int, image: bool) -> None:
        addr = self._addr(t, f)
        limit = self.npix * 4 if image else self.memory_bytes
        ok = self._access_ok(t, addr, size, limit)
        t, f, addr = t[ok], f.sub(ok), addr[ok]
        b = self.img if image else self.memb
        if size == 1:
            v = b[addr].astype(U32)
        elif size == 2:
            v = b[addr].astype(U32) | b[addr + 1].astype(U32) << U32(8)
        else:
            v = (self.px if image else self.mem)[addr >> 2]
        self._set(t, f, v)

    def _store(self, t, f, size: int) -> None:
        addr = self._addr(t, f)
        ok = self._access_ok(t, addr, size, self.memory_bytes)
        t, f, addr = t[ok], f.sub(ok), addr[ok]
        v = self._r(t, f.g)
        if size == 4:
            self.mem[addr >> 2] = v
        else:
            for i in range(size):
                self.memb[addr + i] = (v >> U32(8 * i)) & U32(0xFF)
        self.pc[t] += 1

    def _op_ld8(self, t, f):
        self._load(t, f, 1, image=False)

    def _op_ld16(self, t, f):
        self._load(t, f, 2, image=False)

    def _op_ld32(self, t, f):
        self._load(t, f, 4, image=False)

    def _op_lp8(self, t, f):
        self._load(t, f, 1, image=True)

    def _op_lp32(self, t, f):
        self._load(t, f, 4, image=True)

    def _op_st8(self, t, f):
        self._store(t, f, 1)

    def _op_st16(self, t, f):
        self._store(t, f, 2)

    def _op_st32(self, t, f):
        self._store(t, f, 4)

    # --- requests -------------------------------------------------------------------------

    def _block(self, t, kind: RequestKind, width, addr: np.ndarray, value: np.ndarray) -> None:
        addr = addr.astype(np.uint64)
        value = value.astype(np.uint64)
        self.status[t] = Status.BLOCKED
        rq = self.request
        rq[t, 0] = kind
        rq[t, 1] = width
        rq[t, 2] = (addr & np.uint64(MASK32)).astype(U32)
        rq[t, 3] = (addr >> np.uint64(32)).astype(U32)
        rq[t, 4] = (value & np.uint64(MASK32)).astype(U32)
        rq[t, 5] = (value >> np.uint64(32)).astype(U32)

    def _port_ok(self, t, port: np.ndarray) -> np.ndarray:
        bad = port > 0xFFFF
        if bad.any():
            self._fault(t[bad], F.BAD_PORT, port[bad], 0)
        return ~bad

    @staticmethod
    def _mask(width: np.ndarray) -> np.ndarray:
        return ((np.uint64(1) << width.astype(np.uint64)) - np.uint64(1)).astype(np.uint64)

    def _op_in(self, t, f):
        port = self._r(t, f.b)
        ok = self._port_ok(t, port)
        self._block(t[ok], RequestKind.PORT_IN, f.a[ok], port[ok], np.zeros(ok.sum(), U32))

    def _op_out(self, t, f):
        port = self._r(t, f.g)
        ok = self._port_ok(t, port)
        t, f, port = t[ok], f.sub(ok), port[ok]
        value = self._r(t, f.b).astype(np.uint64) & self._mask(f.a)
        self._block(t, RequestKind.PORT_OUT, f.a, port, value)

    def _pair(self, t, idx) -> np.ndarray:
        return self._r(t, idx).astype(np.uint64) | self._r(t, idx + 1).astype(
            np.uint64
        ) << np.uint64(32)

    def _mmio_aligned(self, t, addr: np.ndarray, width: np.ndarray) -> np.ndarray:
        size = (width // 8).astype(np.uint64)
        mis = (addr & (size - np.uint64(1))) != 0
        if mis.any():
            self._fault(
                t[mis],
                F.MISALIGNED,
                (addr[mis] & np.uint64(MASK32)).astype(np.int64),
                size[mis].astype(np.int64),
            )
        return ~mis

    def _op_mrd(self, t, f):
        addr = self._pair(t, f.b)
        ok = self._mmio_aligned(t, addr, f.a)
        self._block(t[ok], RequestKind.MMIO_READ, f.a[ok], addr[ok], np.zeros(ok.sum(), U32))

    def _op_mwr(self, t, f):
        addr = self._pair(t, f.g)
        ok = self._mmio_aligned(t, addr, f.a)
        t, f, addr = t[ok], f.sub(ok), addr[ok]
        self._block(t, RequestKind.MMIO_WRITE, f.a, addr, self._mwr_value(t, f))

    def _mwr_value(self, t, f) -> np.ndarray:
        wide = f.a == 64
        value = np.where(
            wide, self._pair(t, np.minimum(f.b, 14)), self._r(t, f.b).astype(np.uint64)
        )
        return np.where(wide, value, value & self._mask(np.where(wide, 32, f.a)))

    def _post(self, t, kind: RequestKind, width, addr, value) -> np.ndarray:
        """Posted writes: a thread with a credit goes on; the others wait (returned mask)."""
        ok = self.posted_n[t] < POST_CREDITS
        for i in np.flatnonzero(ok):
            ti = int(t[i])
            self.new_posted.append(
                Request(
                    ti,
                    int(self.pc[ti]),
                    kind,
                    int(width[i]),
                    int(addr[i]),
                    int(value[i]),
                    posted=True,
                )
            )
        self.posted_n[t[ok]] += 1
        self.pc[t[ok]] += 1
        return ~ok

    def _op_outp(self, t, f):
        port = self._r(t, f.g)
        ok = self._port_ok(t, port)
        t, f, port = t[ok], f.sub(ok), port[ok]
        value = self._r(t, f.b).astype(np.uint64) & self._mask(f.a)
        wait = self._post(t, RequestKind.PORT_OUT, f.a, port, value)
        self._block(t[wait], RequestKind.PORT_OUT, f.a[wait], port[wait], value[wait])

    def _op_mwrp(self, t, f):
        addr = self._pair(t, f.g)
        ok = self._mmio_aligned(t, addr, f.a)
        t, f, addr = t[ok], f.sub(ok), addr[ok]
        value = self._mwr_value(t, f)
        wait = self._post(t, RequestKind.MMIO_WRITE, f.a, addr, value)
        self._block(t[wait], RequestKind.MMIO_WRITE, f.a[wait], addr[wait], value[wait])

    def _op_wait(self, t, f):
        self._block(t, RequestKind.WAIT_EVENT, 32, self._r(t, f.b), np.zeros(t.size, U32))

    def _request(self, t: int) -> Request:
        rq = [int(v) for v in self.request[t]]
        return Request(
            t, int(self.pc[t]), RequestKind(rq[0]), rq[1], rq[2] | rq[3] << 32, rq[4] | rq[5] << 32
        )

    # --- neural ops (one thread at a time, in thread order) --------------------------------

    def _region(self, t: int, addr: int, rows: int, cols: int) -> bool:
        """A float32 tensor of rows*cols at byte address addr fits (alignment, bounds)."""
        if addr & 3:
            self._fault(t, F.MISALIGNED, addr, 4)
            return False
        if rows == 0 or cols == 0:
            return True
        avail = (self.memory_bytes - addr) // 4 if addr < self.memory_bytes else 0
        if rows > avail // cols:
            self._fault(t, F.OUT_OF_BOUNDS, addr, (rows * cols) & MASK32)
            return False
        return True

    def _no_overlap(
        self, t: int, out: int, n_out: int, inp: int, n_in: int, allow_same: bool
    ) -> bool:
        if n_out == 0 or n_in == 0 or (allow_same and out == inp):
            return True
        if out < inp + 4 * n_in and inp < out + 4 * n_out:
            self._fault(t, F.OVERLAP, out, inp)
            return False
        return True

    def _matrix(self, t: int, pc: int):
        problem, h = read_header(self.px, pc)
        if problem is not None:
            self._fault(t, F.BAD_MATRIX, pc, int(problem))
        return h

    def _tensor(self, addr: int, rows: int, cols: int) -> np.ndarray:
        w = addr >> 2
        return self.memf[w : w + rows * cols].reshape(rows, cols)

    def _each(self, t, f):
        for i in range(t.size):
            yield int(t[i]), f.sub(np.arange(t.size) == i)

    def _op_matmul(self, t, f):
        for ti, fi in self._each(t, f):
            out, inp, mpc = (int(self.regs[ti, k[0]]) for k in (fi.g, fi.b, fi.a))
            rows = int(self.regs[ti, int(fi.x[0]) & 15])
            h = self._matrix(ti, mpc)
            if h is None:
                continue
            k, n = h.rows, h.cols
            if not (self._region(ti, inp, rows, k) and self._region(ti, out, rows, n)):
                continue
            if not self._no_overlap(ti, out, rows * n, inp, rows * k, allow_same=False):
                continue
            if rows:
                x = self._tensor(inp, rows, k)
                self._tensor(out, rows, n)[...] = np.matmul(
                    x, h.dequantize(self.px), dtype=np.float32
                )
            self.pc[ti] += 2

    def _op_addmat(self, t, f):
        for ti, fi in self._each(t, f):
            out, inp, mpc = (int(self.regs[ti, k[0]]) for k in (fi.g, fi.b, fi.a))
            rows = int(self.regs[ti, int(fi.x[0]) & 15])
            h = self._matrix(ti, mpc)
            if h is None:
                continue
            if h.rows != 1 and h.rows != rows:
                self._fault(ti, F.SHAPE, h.rows, rows)
                continue
            n = h.cols
            if not (self._region(ti, inp, rows, n) and self._region(ti, out, rows, n)):
                continue
            if not self._no_overlap(ti, out, rows * n, inp, rows * n, allow_same=True):
                continue
            if rows:
                x = self._tensor(inp, rows, n)
                self._tensor(out, rows, n)[...] = x + h.dequantize(self.px)
            self.pc[ti] += 2

    def _op_relu(self, t, f):
        for ti, fi in self._each(t, f):
            out, inp, n = (int(self.regs[ti, k[0]]) for k in (fi.g, fi.b, fi.a))
            if not (self._region(ti, inp, n, 1) and self._region(ti, out, n, 1)):
                continue
            if not self._no_overlap(ti, out, n, inp, n, allow_same=True):
                continue
            if n:
                x = self._tensor(inp, 1, n)
                self._tensor(out, 1, n)[...] = np.where(x > 0, x, np.float32(0))
            self.pc[ti] += 1

    def _op_embed(self, t, f):
        for ti, fi in self._each(t, f):
            out, tok, mpc = (int(self.regs[ti, k[0]]) for k in (fi.g, fi.b, fi.a))
            h = self._matrix(ti, mpc)
            if h is None:
                continue
            if tok >= h.rows:
                self._fault(ti, F.SHAPE, tok, h.rows)
                continue
            if not self._region(ti, out, 1, h.cols):
                continue
            row = h.q(self.px)[tok : tok + 1]
            self._tensor(out, 1, h.cols)[...] = dequantize(row, h.scale, h.offset)
            self.pc[ti] += 1

    def _op_argmax(self, t, f):
        for ti, fi in self._each(t, f):
            inp, n = int(self.regs[ti, int(fi.b[0])]), int(self.regs[ti, int(fi.a[0])])
            if n == 0:
                self._fault(ti, F.SHAPE, 0, 0)
                continue
            if not self._region(ti, inp, 1, n):
                continue
            x = self._tensor(inp, 1, n)[0]
            # Sequential definition: best = x[0]; i wins if x[i] > best.  NaN never wins
            # (unless x[0] is NaN, then nothing beats it); ties keep the first index.
            if np.isnan(x[0]):
                idx = 0
            else:
                valid = np.where(np.isnan(x), -np.inf, x)
                idx = int(np.flatnonzero(valid == valid.max())[0])
            self.regs[ti, int(fi.g[0])] = idx
            self.pc[ti] += 1

    # --- caller access ----------------------------------------------------------------------

    def _apply_effects(self, effects: np.ndarray) -> None:
        for row in effects:
            t = int(row[_E["thread"]])
            self.posted_n[t] -= row[_E["credit"]]
            if row[_E["keep"]]:
                continue
            self.pc[t] = row[_E["pc"]]
            self.status[t] = row[_E["status"]]
            for reg, val in (("reg", "val_lo"), ("reg2", "val_hi")):
                if row[_E[reg]] != NO_REG:
                    self.regs[t, row[_E[reg]]] = row[_E[val]]
            if row[_E["fault"]]:
                self.fault[t] = (row[_E["fault"]], row[_E["fd0"]], row[_E["fd1"]])

    def state(self) -> MachineState:
        return MachineState(
            pc=self.pc.copy(),
            status=self.status.copy(),
            steps=self.steps.copy(),
            regs=self.regs.copy(),
            sp=self.sp.copy(),
            stack=self.stack.copy(),
            fault=self.fault.copy(),
            request=self.request.copy(),
            posted=self.posted_n.copy(),
        )

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.memory_bytes:
            raise ValueError(f"memory range {offset}+{length} outside 0..{self.memory_bytes}")

    def read_memory(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        return self.memb[offset : offset + length].tobytes()

    def write_memory(self, offset: int, data: bytes) -> None:
        self._check_range(offset, len(data))
        self.memb[offset : offset + len(data)] = np.frombuffer(bytes(data), np.uint8)

    def profile_counts(self) -> np.ndarray:
        if self.prof is None:
            raise ValueError("construct the executor with profile=True to count executions")
        return self.prof.copy()


assert all(hasattr(NumpyExecutor, "_op_" + op.mnemonic) for op in OPCODES), (
    "opcode without a handler"
)
assert set(BY_CHAR) == {op.code for op in OPCODES}
