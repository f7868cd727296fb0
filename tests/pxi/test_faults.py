"""Bad programs fault identically on both backends, naming thread, pc and pixel (x, y);
runaway programs stop at the budget; nothing hangs or crashes the host."""

from __future__ import annotations

import numpy as np
import pytest
from pxi_util import asm, assert_same_state, run_both

from pxi.executor import fault_message
from pxi.image import Program
from pxi.machine import FaultCode, Status

pytestmark = pytest.mark.wgpu

F = FaultCode
MATRIX_OK = '.qmatrix 2, 2, 0x3f800000, 0\n.hex "01020304"\n'
BAD = {
    "unknown_opcode": ("nop\n.word 0x7f\n", F.UNKNOWN_OPCODE, 1, "unknown opcode 0x7f"),
    "matrix_executed": ("nop\nm: " + MATRIX_OK, F.UNKNOWN_OPCODE, 1, "a quantized-matrix header"),
    "bad_register": ("nop\n.word 0x00011a2b\n", F.BAD_ENCODING, 1, "bad encoding"),
    "jump_out_of_range": (
        "li r1, 500\njr r1\n",
        F.PC_RANGE,
        1,
        "jr r1 jumps to pc 500, outside the program",
    ),
    "fall_off_end": (".width 2\nnop\nnop\n", F.PC_RANGE, 2, "fell off the end"),
    "truncated_ext": (".width 1\nnop\n.word '$'\n", F.PC_RANGE, 1, "needs an extension pixel"),
    "misaligned": (
        "li r1, 2\nld32 r2, r1, 0\nhalt\n",
        F.MISALIGNED,
        1,
        "misaligned 32-bit access to data memory address 0x2",
    ),
    "out_of_bounds": (
        "li r1, 4096\nst8 r1, r1, 0\nhalt\n",
        F.OUT_OF_BOUNDS,
        1,
        "data address 0x1000 (+1 bytes) is outside",
    ),
    "image_out_of_bounds": (
        "li r1, 4000\nlp8 r2, r1, 0\nhalt\n",
        F.OUT_OF_BOUNDS,
        1,
        "outside the image",
    ),
    "call_overflow": ("f: call f\n", F.CALL_OVERFLOW, 0, "call stack overflow (depth 8"),
    "ret_underflow": ("ret\n", F.RET_UNDERFLOW, 0, "return with an empty call stack"),
    "bad_port": (
        "li32 r1, 0x10000\nout r1, r1, 8\n",
        F.BAD_PORT,
        2,
        "port 0x10000 is not an I/O port",
    ),
    "matrix_marker": (
        "li r1, 1\nmatmul r2, r3, r1, r4\nhalt\n",
        F.BAD_MATRIX,
        1,
        "is not a matrix header",
    ),
    "matrix_empty": (
        "li32 r1, m\nli r2, 1\nembed r3, r2, r1\nhalt\nm: .qmatrix 0x0, 1, 0x3f800000, 0\n",
        None,
        None,
        None,
    ),
    "matrix_past_end": (
        "li32 r1, m\nembed r3, r2, r1\nhalt\nm: .word 0x151, 1000, 1000, 0x3f800000, 0\n",
        F.BAD_MATRIX,
        2,
        "extends past the end",
    ),
    "matrix_scale": (
        "li32 r1, m\nembed r3, r2, r1\nhalt\nm: .word 0x151, 1, 4, 0xbf800000, 0\n.word 0\n",
        F.BAD_MATRIX,
        2,
        "scale",
    ),
    "embed_token": (
        "li32 r1, m\nli r2, 7\nembed r3, r2, r1\nhalt\nm: " + MATRIX_OK,
        F.SHAPE,
        3,
        "token 7 is outside the embedding's 2 rows",
    ),
    "matmul_overlap": (
        "li32 r1, m\nli r2, 1\nli r3, 0\nmatmul r3, r3, r1, r2\nhalt\nm: " + MATRIX_OK,
        F.OVERLAP,
        4,
        "overlaps",
    ),
    "tensor_oob": (
        "li32 r1, m\nli r2, 1000\nli r3, 0\nli r4, 0x80\nmatmul r4, r3, r1, r2\nhalt\nm: "
        + MATRIX_OK,
        F.OUT_OF_BOUNDS,
        5,
        "2000 float32",
    ),
    "argmax_empty": ("li r1, 0\nargmax r2, r1, r1\nhalt\n", F.SHAPE, 1, "an empty vector"),
}


@pytest.mark.parametrize("name", sorted(k for k, v in BAD.items() if v[1] is not None))
def test_bad_program_same_error(name):
    src, code, pc, text = BAD[name]
    prog = asm(src)
    exs, logs = run_both(prog, threads=2, memory=4096, budget=1000)
    assert_same_state(exs)
    faults = logs[0][0][1]
    assert [f.code for f in faults] == [code, code] and faults[0].pc == pc
    # Each backend's own fault, rendered against its own program: numpy's and wgpu's.
    msgs = [fault_message(log[0][1][0], ex.program) for ex, log in zip(exs, logs, strict=True)]
    x, y = prog.xy(pc)
    for backend, msg in zip(("numpy", "wgpu"), msgs, strict=True):
        assert f"thread 0: pc {pc} (pixel x={x}, y={y})" in msg, (backend, msg)
        assert text in msg, (backend, msg)
    assert msgs[0] == msgs[1]
    assert logs[0][0][1] == logs[1][0][1]


def test_assembler_refuses_empty_matrix():
    from pxi.errors import AsmError

    with pytest.raises(AsmError, match="rows and cols must be"):
        asm(BAD["matrix_empty"][0])


def test_runaway_stops_at_budget_identically():
    prog = asm("li r1, 0\nloop: addi r1, r1, 1\njmp loop\n")
    exs, logs = run_both(prog, threads=3, budget=100_001, rounds=3)
    assert_same_state(exs)
    st = exs[1].state()
    assert (st.status == Status.RUNNABLE).all() and (st.steps == 300_003).all()
    assert logs[1][-1][4] == 3  # out of budget


def test_denied_request_faults_the_thread():
    prog = asm("li r1, 0x80\nli r2, 1\nout r1, r2, 8\nhalt\n")
    exs, logs = run_both(
        prog, answer=lambda r: __import__("pxi.executor").executor.Response(r.thread, deny=True)
    )
    assert_same_state(exs)
    st = exs[0].state()
    assert st.status[0] == Status.FAULTED and st.fault[0, 0] == F.DENIED


def test_random_pixels_never_hang_or_crash():
    """Any image whatsoever: both backends end within the budget with the same state."""
    rng = np.random.default_rng(1)
    for _ in range(5):
        px = rng.integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32)
        px[rng.random(64) < 0.5] &= 0x0F0F0F7F  # more plausible encodings
        exs, _ = run_both(Program(px, 8), threads=4, memory=1024, budget=500, rounds=4)
        assert_same_state(exs)
