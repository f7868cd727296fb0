"""The wgpu executor: PXI threads as invocations of a WGSL compute shader.

Program pixels, data memory and the thread state live in storage buffers.  ``run``
dispatches the interpreter (pxi/wgsl/interp.wgsl) repeatedly: each dispatch runs every
runnable thread for at most a slice of steps, then the host reads a small counter block
plus the event queue (new requests, faults, deferred neural ops), runs deferred neural
ops as their own tiled dispatches (pxi/wgsl/neural.wgsl, pxi/tiling.py), releases a
barrier when every live thread has reached it, and stops when no thread can run.

The slice bounds how long one dispatch can take, so a runaway program never holds the
GPU for long; the caller's step budget bounds the whole run.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import BackendError
from .executor import EFFECT_FIELDS, Executor, Fault, MachineState, Request, RunResult, check_entry
from .gpu import get_gpu
from .image import Program
from .machine import (
    CALL_DEPTH,
    FIELD,
    NREGS,
    POST_CREDITS,
    STATE_FIELDS,
    FaultCode,
    NeuralKind,
    RequestKind,
    Status,
)
from .matrix import read_header
from .opcodes import BY_MNEMONIC
from .tiling import SMALL_TILE, Tile, choose_tile, matmul_v4_module, matmul_wgsl
from .wgslgen import (
    COUNTERS,
    FLAGS,
    QUEUE_ENTRY,
    QUEUE_HEADER,
    QUEUE_KINDS,
    WORKGROUP,
    render,
    template,
)

U32 = np.uint32
NF = len(STATE_FIELDS)
PREFETCH = 64  # queue entries read back with the counters (more need a second read)
INTERP_LAYOUT = ["read", "rw", "rw", "rw", "read", "rw", "read"]
NEURAL_LAYOUT = ["read", "rw", "read"]


_NEURAL_SRC: dict[str, str] = {}  # rendered neural.wgsl per MatMul tile


def _grid(n_groups: int) -> tuple[int, int]:
    """Workgroups as (x, y) within the 65535-per-dimension limit."""
    x = min(max(n_groups, 1), 65535)
    return x, -(-max(n_groups, 1) // x)


class WgpuExecutor(Executor):
    backend = "wgpu"

    def __init__(
        self,
        program: Program,
        threads: int,
        memory_bytes: int,
        entry=None,
        profile=False,
        tile: Tile | None = None,
        inline_work: int = 1 << 16,
        dispatch_steps: int = 1 << 27,
    ):
        """inline_work: neural ops doing more multiply-adds (or elements) than this run
        as their own dispatches; dispatch_steps: the target of steps (all threads) per
        interpreter dispatch, which sets the per-thread slice; tile: the MatMul tile of
        deferred products (None: chosen per product by ``pxi.tiling.choose_tile``)."""
        super().__init__(program, threads, memory_bytes, entry, profile)
        check_entry(program, self.entry)
        import wgpu

        self._wgpu = wgpu
        self.gpu = gpu = get_gpu()
        self.device = dev = gpu.device
        self.tile = tile
        self.inline_work = inline_work
        self.slice = int(min(max(1024, dispatch_steps // threads), (1 << 32) - 1))
        limit = gpu.limits["max-storage-buffer-binding-size"]
        S = wgpu.BufferUsage
        # Queue entries per thread and dispatch: its own (request, fault, neural op) and,
        # in a program with posted writes, one per posting credit.  Programs without
        # them keep the small queue (a data pixel that looks like one only costs room).
        ops = program.pixels & 0xFF
        posts = any(np.any(ops == BY_MNEMONIC[m].code) for m in ("outp", "mwrp"))
        per_thread = 1 + POST_CREDITS if posts else 1
        sizes = {
            "program": program.npix * 4,
            "data memory": memory_bytes,
            "thread state": NF * threads * 4,
            "event queue": (QUEUE_HEADER + QUEUE_ENTRY * threads * per_thread) * 4,
        }
        for what, size in sizes.items():
            if size > limit:
                raise BackendError(
                    f"the {what} needs {size} bytes but this adapter ({gpu.adapter_string}) binds at most "
                    f"{limit} bytes per storage buffer; use fewer threads, less memory or --backend numpy."
                )
        self.prog = dev.create_buffer_with_data(
            data=program.pixels.astype("<u4").tobytes(), usage=S.STORAGE
        )
        self.mem = dev.create_buffer(size=memory_bytes, usage=S.STORAGE | S.COPY_DST | S.COPY_SRC)
        init = np.zeros((NF, threads), U32)
        init[FIELD["PC"]] = self.entry
        self.st = dev.create_buffer_with_data(
            data=init.tobytes(), usage=S.STORAGE | S.COPY_DST | S.COPY_SRC
        )
        ctr_words = QUEUE_HEADER + QUEUE_ENTRY * threads * per_thread
        self.ctr = dev.create_buffer(size=ctr_words * 4, usage=S.STORAGE | S.COPY_DST | S.COPY_SRC)
        self.params = dev.create_buffer(size=48, usage=S.STORAGE | S.COPY_DST)
        self.nparams = dev.create_buffer(size=48, usage=S.STORAGE | S.COPY_DST)
        prof_size = program.npix * 4 if profile else 4
        self.prof = dev.create_buffer(size=prof_size, usage=S.STORAGE | S.COPY_SRC | S.COPY_DST)
        self._stage_bytes = min(ctr_words, QUEUE_HEADER + QUEUE_ENTRY * PREFETCH) * 4
        self.stage = dev.create_buffer(size=self._stage_bytes, usage=S.MAP_READ | S.COPY_DST)
        self._resp_cap = 0
        self.resp = None
        self._ensure_resp(64)

        key = "interp-prof" if profile else "interp"
        hook = "atomicAdd(&prof[pc], 1u);" if profile else ""
        src = render("interp.wgsl", PROFILE_HOOK=hook)
        self._ilayout = gpu.layout("interp", INTERP_LAYOUT)
        self._p_interp = gpu.pipeline(key, src, "interp", self._ilayout)
        self._p_respond = gpu.pipeline(key, src, "respond", self._ilayout)
        self._nlayout = gpu.layout("neural", NEURAL_LAYOUT)
        if (
            tile is not None
            and tile.shared_bytes > gpu.limits["max-compute-workgroup-storage-size"]
        ):
            raise BackendError(
                f"the MatMul tile {tile} needs {tile.shared_bytes} bytes of workgroup memory; "
                f"this adapter ({gpu.adapter_string}) gives at most "
                f"{gpu.limits['max-compute-workgroup-storage-size']}."
            )
        self._nbind = dev.create_bind_group(
            layout=self._nlayout,
            entries=[
                self._entry(0, self.prog),
                self._entry(1, self.mem),
                self._entry(2, self.nparams),
            ],
        )
        self._neural_cmd = None  # recorded, submitted with the next interpreter dispatch
        self._run_id = 0
        self._steps_total = 0
        self._budget = 0
        self._wg = _grid(-(-threads // WORKGROUP))

    # --- plumbing ---------------------------------------------------------------------

    @staticmethod
    def _entry(binding: int, buf) -> dict:
        return {"binding": binding, "resource": {"buffer": buf, "offset": 0, "size": buf.size}}

    def _ensure_resp(self, n: int) -> None:
        if n <= self._resp_cap:
            return
        cap = max(n, 2 * self._resp_cap)
        S = self._wgpu.BufferUsage
        self.resp = self.device.create_buffer(
            size=cap * len(EFFECT_FIELDS) * 4, usage=S.STORAGE | S.COPY_DST
        )
        self._resp_cap = cap
        bufs = [self.prog, self.mem, self.st, self.ctr, self.params, self.prof, self.resp]
        self._ibind = self.device.create_bind_group(
            layout=self.gpu.layout("interp", INTERP_LAYOUT),
            entries=[self._entry(i, b) for i, b in enumerate(bufs)],
        )

    def _write_params(self, flags: int = 0, nresp: int = 0) -> None:
        p = np.array(
            [
                self._run_id,
                self._budget,
                self.slice,
                flags,
                self.threads,
                self.program.npix,
                self.memory_bytes,
                self.inline_work,
                nresp,
                0,
                0,
                0,
            ],
            dtype=U32,
        )
        self.device.queue.write_buffer(self.params, 0, p.tobytes())

    def _read(self, buf, offset: int, size: int) -> np.ndarray:
        return np.frombuffer(self.device.queue.read_buffer(buf, offset, size), dtype=U32).copy()

    def _dispatch(self, flags: int) -> tuple[np.ndarray, np.ndarray]:
        """One interpreter dispatch; returns the counters and the event-queue entries."""
        self._write_params(flags)
        enc = self.device.create_command_encoder()
        enc.clear_buffer(self.ctr, 0, QUEUE_HEADER * 4)
        cp = enc.begin_compute_pass()
        cp.set_pipeline(self._p_interp)
        cp.set_bind_group(0, self._ibind)
        cp.dispatch_workgroups(self._wg[0], self._wg[1], 1)
        cp.end()
        enc.copy_buffer_to_buffer(self.ctr, 0, self.stage, 0, self._stage_bytes)
        # the last deferred neural op travels in the same submission (one submit less)
        cmds = [self._neural_cmd, enc.finish()] if self._neural_cmd else [enc.finish()]
        self._neural_cmd = None
        self.device.queue.submit(cmds)
        self.stage.map_sync(self._wgpu.MapMode.READ)
        data = np.frombuffer(self.stage.read_mapped(), dtype=U32).copy()
        self.stage.unmap()
        hdr = data[:QUEUE_HEADER]
        n = int(hdr[COUNTERS["C_QUEUE"]])
        entries = data[QUEUE_HEADER:].reshape(-1, QUEUE_ENTRY)[: min(n, PREFETCH)]
        if n > PREFETCH:
            rest = self._read(
                self.ctr,
                (QUEUE_HEADER + PREFETCH * QUEUE_ENTRY) * 4,
                (n - PREFETCH) * QUEUE_ENTRY * 4,
            )
            entries = np.concatenate([entries, rest.reshape(-1, QUEUE_ENTRY)])
        return hdr, entries

    def _steps_sum(self) -> int:
        lohi = self._read(
            self.st, FIELD["STEPS_LO"] * self.threads * 4, 2 * self.threads * 4
        ).reshape(2, -1)
        return int(
            lohi[0].astype(np.uint64).sum() + (lohi[1].astype(np.uint64) << np.uint64(32)).sum()
        )

    # --- the run loop -------------------------------------------------------------------

    def _run(self, step_budget: int) -> RunResult:
        self._run_id = (self._run_id % 0xFFFFFFFF) + 1  # never 0: fresh threads carry tag 0
        self._budget = step_budget
        requests, faults = [], []
        flags, dispatches = 0, 0
        C = COUNTERS
        while True:
            hdr, entries = self._dispatch(flags)
            dispatches += 1
            flags = 0
            neural = []
            for e in entries:
                tid, kind, pc = int(e[0]), int(e[1]), int(e[2])
                q = [int(v) for v in e[3:8]]
                if kind in (QUEUE_KINDS["Q_REQUEST"], QUEUE_KINDS["Q_POSTED"]):
                    requests.append(
                        Request(
                            tid,
                            pc,
                            RequestKind(q[0] & 0xFF),
                            q[0] >> 8,
                            q[1] | q[2] << 32,
                            q[3] | q[4] << 32,
                            posted=kind == QUEUE_KINDS["Q_POSTED"],
                        )
                    )
                elif kind == QUEUE_KINDS["Q_FAULT"]:
                    faults.append(Fault(tid, pc, FaultCode(q[0]), q[1], q[2]))
                else:
                    neural.append((tid, q))
            if neural:
                self._run_neural(sorted(neural))
                flags |= FLAGS["FLAG_RELEASE_NEURAL"]
                continue
            if hdr[C["C_READY"]] > 0:
                continue
            live = self.threads - int(hdr[C["C_HALTED"]]) - int(hdr[C["C_FAULTED"]])
            if hdr[C["C_BARRIER"]] and int(hdr[C["C_BARRIER"]]) == live:
                flags |= FLAGS["FLAG_RELEASE_BARRIER"]
                continue
            break
        total = self._steps_sum()
        steps, self._steps_total = total - self._steps_total, total
        counts = {s.name: int(hdr[int(s)]) for s in Status if s != Status.NEURAL}
        # Stable sort: a thread's entries stay in issue order (its queue slots increase),
        # its posted writes before the request it blocked on (always its last entry).
        return RunResult(
            requests=sorted(requests, key=lambda r: r.thread),
            faults=sorted(faults, key=lambda f: f.thread),
            steps=steps,
            counts=counts,
            out_of_budget=counts["RUNNABLE"],
            dispatches=dispatches,
            max_thread_steps=int(hdr[C["C_MAXSTEPS"]]),
        )

    # --- deferred neural ops ------------------------------------------------------------

    def _neural_pipeline(self, entry: str, tile: Tile = SMALL_TILE):
        v4 = entry == "matmul_v4"
        key = f"neural-v4-{tile}" if v4 else f"neural-{tile}"
        src = _NEURAL_SRC.get(key)
        if src is None:
            if v4:
                struct = re.search(r"struct NParams \{.*?\n\}", template("neural.wgsl"), re.S)
                src = matmul_v4_module(tile, struct.group(0))
            else:
                src = render("neural.wgsl", MATMUL=matmul_wgsl(tile))
            _NEURAL_SRC[key] = src
        return self.gpu.pipeline(key, src, entry, self._nlayout)

    def _matmul_pass(self, cp, np_: np.ndarray, repeat: int = 1) -> None:
        """Record the tiled MatMul for the parameters np_ (as written to self.nparams):
        ``matmul_v4`` when K, N and both tensors' word addresses are multiples of 4
        (16-byte input loads and output stores), else ``matmul_n4`` when N % 4 == 0 (four
        packed weights per 32-bit load), else ``matmul``."""
        out_w, in_w, rows, k, n = (int(v) for v in np_[:5])
        t = self.tile or choose_tile(rows, n)
        if t.shared_bytes > self.gpu.limits["max-compute-workgroup-storage-size"]:
            t = SMALL_TILE
        if t.v4 and (out_w | in_w | k | n) % 4 == 0:
            entry = "matmul_v4"
        else:
            entry = "matmul_n4" if n % 4 == 0 else "matmul"
        cp.set_pipeline(self._neural_pipeline(entry, t))
        cp.set_bind_group(0, self._nbind)
        for _ in range(repeat):
            cp.dispatch_workgroups(-(-n // t.bn), -(-rows // t.bm), 1)

    def _run_neural(self, ops: list[tuple[int, list[int]]]) -> None:
        """Each op is its own dispatch, in thread order (its parameters written just
        before it is submitted); the last one is left for _dispatch to submit."""
        for i, (_tid, (kind, out, inp, mat, n)) in enumerate(ops):
            np_ = np.zeros(12, U32)
            np_[0], np_[1] = out // 4, inp // 4
            if kind in (NeuralKind.MATMUL, NeuralKind.ADDMAT):
                problem, h = read_header(self.program.pixels, mat)
                assert problem is None, "the interpreter validated this matrix"
                np_[2], np_[3], np_[4], np_[5] = n, h.rows, h.cols, h.data_byte
                np_[6:8] = np.array([h.scale, h.offset], np.float32).view(U32)
                np_[8] = h.rows
                np_[9] = n * h.cols
            else:
                np_[4], np_[9] = n, n
            self.device.queue.write_buffer(self.nparams, 0, np_.tobytes())
            enc = self.device.create_command_encoder()
            cp = enc.begin_compute_pass()
            if kind == NeuralKind.MATMUL:
                self._matmul_pass(cp, np_)
            else:
                entry = "addmat" if kind == NeuralKind.ADDMAT else "relu"
                cp.set_pipeline(self._neural_pipeline(entry))
                cp.set_bind_group(0, self._nbind)
                gx, gy = _grid(-(-int(np_[9]) // 256))
                cp.dispatch_workgroups(gx, gy, 1)
            cp.end()
            if i == len(ops) - 1:
                self._neural_cmd = enc.finish()
            else:
                self.device.queue.submit([enc.finish()])

    def matmul_kernel(self, out: int, inp: int, mat: int, rows: int, repeat: int = 1) -> None:
        """Run the tiled MatMul kernel directly (benchmarks: kernel time without the
        interpreter); same arguments as the matmul instruction, already validated."""
        problem, h = read_header(self.program.pixels, mat)
        if problem is not None:
            raise ValueError(f"no valid matrix at pc {mat}")
        np_ = np.zeros(12, U32)
        np_[0], np_[1], np_[2], np_[3], np_[4], np_[5] = (
            out // 4,
            inp // 4,
            rows,
            h.rows,
            h.cols,
            h.data_byte,
        )
        np_[6:8] = np.array([h.scale, h.offset], np.float32).view(U32)
        self.device.queue.write_buffer(self.nparams, 0, np_.tobytes())
        enc = self.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        self._matmul_pass(cp, np_, repeat)
        cp.end()
        self.device.queue.submit([enc.finish()])

    def sync(self) -> None:
        """Wait for submitted GPU work (a tiny readback; see DESIGN.md on wgpu 0.32)."""
        self._read(self.ctr, 0, 4)

    # --- caller access ------------------------------------------------------------------

    def _apply_effects(self, effects: np.ndarray) -> None:
        n = effects.shape[0]
        self._ensure_resp(n)
        self.device.queue.write_buffer(self.resp, 0, effects.astype(U32).tobytes())
        self._write_params(0, nresp=n)
        enc = self.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        cp.set_pipeline(self._p_respond)
        cp.set_bind_group(0, self._ibind)
        cp.dispatch_workgroups(-(-n // 64), 1, 1)
        cp.end()
        self.device.queue.submit([enc.finish()])

    def state(self) -> MachineState:
        s = self._read(self.st, 0, NF * self.threads * 4).reshape(NF, self.threads)
        f = FIELD
        return MachineState(
            pc=s[f["PC"]].copy(),
            status=s[f["STATUS"]].copy(),
            steps=s[f["STEPS_LO"]].astype(np.uint64)
            | s[f["STEPS_HI"]].astype(np.uint64) << np.uint64(32),
            regs=s[f["R0"] : f["R0"] + NREGS].T.copy(),
            sp=s[f["SP"]].copy(),
            stack=s[f["STACK0"] : f["STACK0"] + CALL_DEPTH].T.copy(),
            fault=s[[f["FAULT"], f["FD0"], f["FD1"]]].T.copy(),
            request=s[f["RQ_KIND"] : f["RQ_VHI"] + 1].T.copy(),
            posted=s[f["POSTED"]].copy(),
        )

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.memory_bytes:
            raise ValueError(f"memory range {offset}+{length} outside 0..{self.memory_bytes}")

    def read_memory(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        if length == 0:
            return b""
        lo, hi = offset & ~3, (offset + length + 3) & ~3
        raw = bytes(self.device.queue.read_buffer(self.mem, lo, hi - lo))
        return raw[offset - lo : offset - lo + length]

    def write_memory(self, offset: int, data: bytes) -> None:
        self._check_range(offset, len(data))
        if not data:
            return
        lo, hi = offset & ~3, (offset + len(data) + 3) & ~3
        if lo != offset or hi != offset + len(data):  # keep the bytes around an unaligned write
            buf = bytearray(self.read_memory(lo, hi - lo))
            buf[offset - lo : offset - lo + len(data)] = data
            data = bytes(buf)
        self.device.queue.write_buffer(self.mem, lo, data)

    def profile_counts(self) -> np.ndarray:
        if not self.profile:
            raise ValueError("construct the executor with profile=True to count executions")
        return self._read(self.prof, 0, self.program.npix * 4).astype(np.uint64)

    def describe(self) -> str:
        return f"wgpu on {self.gpu.adapter_string}"
