"""Neural ops and quantized matrices: both backends against a float32 NumPy forward pass
(correlation >= 0.9999, max abs error <= 0.01), inline and deferred (tiled) GPU paths."""

from __future__ import annotations

import numpy as np
import pytest
from pxi_util import run_both

from pxi.backends import create
from pxi.matrix import dequantize, quantize

pytestmark = pytest.mark.wgpu

ROWS, K, N = 5, 37, 19
IN, OUT, H, L = 0x0, 0x1000, 0x2000, 0x3000


def _program(tmp_path, rows=ROWS, k=K, n=N, seed=0, gap=0x1000):
    IN, OUT, H, L = 0, gap, 2 * gap, 3 * gap  # noqa: N806
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (k, n)).astype(np.float32)
    b = rng.normal(0, 1, (1, n)).astype(np.float32)
    e = rng.normal(0, 1, (11, k)).astype(np.float32)
    for name, arr in (("w", w), ("b", b), ("e", e)):
        np.save(tmp_path / f"{name}.npy", arr)
    src = f"""
        li32 r1, {IN}
        li32 r2, {OUT}
        li r3, {rows}
        li32 r4, W
        matmul r2, r1, r4, r3       ; OUT = IN @ W
        li32 r4, B
        li32 r5, {H}
        addmat r5, r2, r4, r3       ; H = OUT + b (broadcast)
        li r6, {rows * n}
        relu r5, r5, r6             ; in place
        argmax r7, r5, r6
        li32 r4, E
        li r8, 7
        li32 r9, {L}
        embed r9, r8, r4            ; L = E[7]
        halt
    W: .matrix "w.npy"
    B: .matrix "b.npy"
    E: .matrix "e.npy"
    """
    (tmp_path / "n.pxs").write_text(src)
    from pxi.asm import assemble_file

    prog = assemble_file(tmp_path / "n.pxs")
    x = rng.normal(0, 1, (rows, k)).astype(np.float32)
    return prog, x, [quantize(a) for a in (w, b, e)]


def _reference(x, qs):
    w, b, e = (q.dequantize() for q in qs)
    out = np.matmul(x, w, dtype=np.float32)
    h = np.maximum(out + b, 0)
    return out, h, e[7]


def _close(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    assert np.abs(a - b).max() <= 0.01, np.abs(a - b).max()
    assert np.corrcoef(a, b)[0, 1] >= 0.9999


def _floats(ex, addr, n):
    return np.frombuffer(ex.read_memory(addr, 4 * n), np.float32)


@pytest.mark.parametrize(
    "inline_work", [1 << 16, 0]
)  # inline in the interpreter / deferred tiled dispatches
def test_neural_ops_match_float32_reference(tmp_path, inline_work):
    prog, x, qs = _program(tmp_path)
    exs, _ = run_both(
        prog,
        memory=0x4000,
        setup=lambda ex: ex.write_memory(IN, x.tobytes()),
        inline_work=inline_work,
    )
    out, h, emb = _reference(x, qs)
    for ex in exs:
        st = ex.state()
        assert st.status[0] == 1, f"{ex.backend} did not halt"
        _close(_floats(ex, OUT, ROWS * N), out)
        _close(_floats(ex, H, ROWS * N), h)
        # A lookup, but dequantization divides, and WGSL's f32 division may be off by
        # 2.5 ULP (NVIDIA's is): exact on lavapipe, within a few ULP on real GPUs.
        assert np.allclose(_floats(ex, L, K), emb, rtol=1e-6, atol=1e-6)
        assert st.regs[0, 7] == int(np.argmax(_floats(exs[0], H, ROWS * N)))
    assert exs[0].state().regs[0, 7] == exs[1].state().regs[0, 7]


def test_tiled_matmul_edges(tmp_path):
    """Shapes that are not multiples of the 64x64x16 tile, through the deferred kernel."""
    prog, x, qs = _program(tmp_path, rows=70, k=45, n=67, seed=3, gap=0x8000)
    ex = create("wgpu", prog, 1, 0x20000, inline_work=0)
    ex.write_memory(IN, x.tobytes())
    res = ex.run(1000)
    assert not res.faults and res.counts["HALTED"] == 1
    out, h, _ = _reference(x, qs)
    got = np.frombuffer(ex.read_memory(0x8000, 70 * 67 * 4), np.float32)
    _close(got, out)


def test_quantization_definition():
    f = np.array([[-1.0, 0.0, 0.5, 3.0]], np.float32)
    q = quantize(f)
    assert q.q.tolist() == [[0, 64, 96, 255]] and q.offset == np.float32(-1.0)
    assert q.scale == np.float32(255.0) / np.float32(4.0)
    back = dequantize(q.q, q.scale, q.offset)
    assert np.abs(back - f).max() <= 0.5 / q.scale + 1e-7
    assert quantize(np.full(3, 2.0, np.float32)).q.tolist() == [[0, 0, 0]]  # constant: scale 1
