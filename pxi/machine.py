"""Constants of the PXI machine model shared by both executors.

Like the opcode table, these are the single source of truth: the NumPy executor uses
them directly and ``pxi.wgslgen`` turns them into WGSL constants for the wgpu executor.
The semantics they name are specified in docs/pxi.md ("Machine model").
"""

from __future__ import annotations

from enum import IntEnum

NREGS = 16  # general-purpose 32-bit registers r0..r15 per thread
CALL_DEPTH = 8  # return addresses a thread's call stack holds
MAX_PIXELS = 1 << 28  # largest program (pixels); keeps image byte addresses in u32
MAX_MEMORY = (1 << 32) - 4  # largest data memory (bytes, a multiple of 4)
MAX_BUDGET = (1 << 32) - 1  # largest step budget of one run()
# Posting credits per thread: posted writes (outp, mwrp) a thread may have issued and
# not yet seen answered.  Without a credit a posted write waits like its non-posted
# form (docs/pxi.md, "Posted writes"); the bound keeps the request stream finite.
POST_CREDITS = 8


class Status(IntEnum):
    RUNNABLE = 0
    HALTED = 1
    BLOCKED = 2  # waiting for the caller's response to its request
    BARRIER = 3  # arrived at a barrier, waiting for the others
    YIELDED = 4  # ended its part of the round; runnable next round
    FAULTED = 5
    NEURAL = 6  # wgpu internal: a neural op deferred to its own dispatch (never seen by callers)


class FaultCode(IntEnum):
    NONE = 0
    UNKNOWN_OPCODE = 1  # d0 = pixel
    BAD_ENCODING = 2  # d0 = pixel, d1 = 0 instruction pixel / 1 extension pixel
    PC_RANGE = 3  # d0 = offending pc, d1 = 0 fetch / 1 jump target / 2 missing extension pixel
    MISALIGNED = 4  # d0 = address, d1 = access size in bytes
    OUT_OF_BOUNDS = 5  # d0 = address, d1 = access size in bytes (neural ops: element count)
    CALL_OVERFLOW = 6  # d0 = call depth
    RET_UNDERFLOW = 7
    BAD_PORT = 8  # d0 = port value
    BAD_MATRIX = 9  # d0 = header pc, d1 = MatrixProblem
    SHAPE = 10  # d0, d1: the mismatching sizes (see docs/pxi.md)
    OVERLAP = 11  # d0 = output address, d1 = input address
    DENIED = 12  # d0 = kind << 8 | width, d1 = low 32 bits of the address


class MatrixProblem(IntEnum):
    MARKER = 1  # the pixel is not a matrix header
    DTYPE = 2  # dtype is not u8 or the reserved bytes are not 0
    EMPTY = 3  # rows or cols is 0
    PAST_END = 4  # header or data extends past the end of the image
    SCALE = 5  # scale not finite and > 0, or offset not finite


class RequestKind(IntEnum):
    PORT_IN = 1
    PORT_OUT = 2
    MMIO_READ = 3
    MMIO_WRITE = 4
    WAIT_EVENT = 5


class NeuralKind(IntEnum):
    """Neural ops the wgpu executor may run as their own dispatches."""

    MATMUL = 1
    ADDMAT = 2
    RELU = 3


# Thread state: one u32 per field per thread.  The wgpu executor keeps it
# structure-of-arrays (field * threads + tid) so a warp's loads coalesce.
STATE_FIELDS = (
    "PC",
    "STATUS",
    "STEPS_LO",
    "STEPS_HI",
    "BUDGET",  # steps left in the current run()
    "RUN_TAG",  # the run() the budget belongs to
    "SP",  # call-stack depth
    "FAULT",
    "FD0",
    "FD1",
    "RQ_KIND",  # the last request issued (kept after the response)
    "RQ_WIDTH",
    "RQ_ALO",
    "RQ_AHI",
    "RQ_VLO",
    "RQ_VHI",
    "POSTED",  # posted writes issued and not yet answered (0..POST_CREDITS)
    *(f"STACK{i}" for i in range(CALL_DEPTH)),
    *(f"R{i}" for i in range(NREGS)),
)
FIELD = {name: i for i, name in enumerate(STATE_FIELDS)}
