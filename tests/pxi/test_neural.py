"""Neural ops and quantized matrices: both backends against a float32 NumPy forward pass
(correlation >= 0.9999, max abs error <= 0.01), inline and deferred (tiled) GPU paths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pxi_util import run_both

from pxi.asm import assemble_text
from pxi.backends import create
from pxi.gpu import get_gpu
from pxi.matrix import dequantize, quantize
from pxi.tiling import TILES

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
    """Shapes that are not multiples of the tile, through the deferred kernel."""
    prog, x, qs = _program(tmp_path, rows=70, k=45, n=67, seed=3, gap=0x8000)
    ex = create("wgpu", prog, 1, 0x20000, inline_work=0)
    ex.write_memory(IN, x.tobytes())
    res = ex.run(1000)
    assert not res.faults and res.counts["HALTED"] == 1
    out, h, _ = _reference(x, qs)
    got = np.frombuffer(ex.read_memory(0x8000, 70 * 67 * 4), np.float32)
    _close(got, out)


def _matmul_only(rows, k, n, seed, in_addr, out_addr):
    """A program doing one matmul (weights N(0,1), quantized) at the given addresses."""
    from pxi.image import Program

    rng = np.random.default_rng(seed)
    qm = quantize(rng.normal(0, 1, (k, n)).astype(np.float32))
    width = 64
    code = assemble_text(
        f".width {width}\nli32 r1, {in_addr}\nli32 r2, {out_addr}\nli32 r3, {rows}\n"
        f"li32 r4, {width}\nmatmul r2, r1, r4, r3\nhalt\n",
        "<mm>",
    )
    px = np.concatenate([code.pixels[:width], qm.pixels()])
    px = np.concatenate([px, np.zeros((-px.size) % width, np.uint32)])
    x = rng.normal(0, 1, (rows, k)).astype(np.float32)
    return Program(px, width), qm, x


# (rows, K, N, input address, output address) and the entry point they must take:
# matmul_v4 needs K, N and both word addresses multiples of 4; matmul_n4 N % 4 == 0.
SHAPES = [
    ((70, 44, 132, 0, 0x10000), "matmul_v4"),  # edges in every dimension, K tail
    ((130, 36, 68, 16, 0x10010), "matmul_v4"),
    ((70, 44, 132, 4, 0x10000), "matmul_n4"),  # input not 16-byte aligned
    ((33, 37, 260, 0, 0x10000), "matmul_n4"),  # K % 4 != 0
    ((70, 45, 67, 0, 0x10000), "matmul"),  # N % 4 != 0
    ((3, 9, 5, 8, 0x10004), "matmul"),
]


ALL_TILES = {**TILES, "large-v4": dataclasses.replace(TILES["large"], v4=True)}


@pytest.mark.parametrize("tile_name", sorted(ALL_TILES))
def test_tiled_matmul_every_tile_and_entry(tile_name):
    """Every named tile, through each entry point (by shape and alignment), against the
    float32 reference; every output element written, nothing around the output touched."""
    import pxi.wgpu_exec as W

    tile = ALL_TILES[tile_name]
    if tile.shared_bytes > get_gpu().limits["max-compute-workgroup-storage-size"]:
        pytest.skip(f"tile {tile} needs more workgroup memory than this adapter has")
    used = []
    orig = W.WgpuExecutor._neural_pipeline

    def spy(self, entry, t=W.SMALL_TILE):
        used.append(entry)
        return orig(self, entry, t)

    W.WgpuExecutor._neural_pipeline = spy
    try:
        for i, ((rows, k, n, ia, oa), entry) in enumerate(SHAPES):
            prog, qm, x = _matmul_only(rows, k, n, i, ia, oa)
            mem = oa + 4 * rows * n + 64
            ex = create("wgpu", prog, 1, mem, inline_work=0, tile=tile)
            ex.write_memory(0, b"\xa5" * mem)  # poison (a NaN-free pattern)
            ex.write_memory(ia, x.tobytes())
            used.clear()
            res = ex.run(100)
            assert not res.faults and res.counts["HALTED"] == 1, res
            want = "matmul_n4" if entry == "matmul_v4" and not tile.v4 else entry
            assert used == [want], (tile, rows, k, n, used)
            got = _floats(ex, oa, rows * n).reshape(rows, n)
            ref = np.matmul(x.astype(np.float64), qm.dequantize().astype(np.float64))
            assert np.abs(got - ref).max() <= 1e-4, (tile, rows, k, n)
            assert ex.read_memory(oa - 16, 16) == b"\xa5" * 16
            assert ex.read_memory(oa + 4 * rows * n, 64) == b"\xa5" * 64
    finally:
        W.WgpuExecutor._neural_pipeline = orig


def test_deferred_matmuls_of_several_threads():
    """Three threads each issue a deferred matmul in the same round (dispatched in
    thread order, the last in the same submission as the next interpreter dispatch);
    both backends agree with the reference."""
    rows, k, n = 40, 36, 72
    prog, qm, x = _matmul_only(rows, k, n, 7, 0, 0)
    src_code = f"""
        .width 64
        tid r5
        li32 r6, {4 * rows * n}
        mul r2, r5, r6
        li32 r6, 0x8000
        add r2, r2, r6              ; out = 0x8000 + tid * rows * n * 4
        li32 r1, 0
        li32 r3, {rows}
        li32 r4, 64
        matmul r2, r1, r4, r3
        halt
    """
    from pxi.image import Program

    code = assemble_text(src_code, "<mm3>")
    px = np.concatenate([code.pixels[:64], prog.pixels[64:]])
    prog = Program(px, 64)
    mem = 0x8000 + 3 * 4 * rows * n
    exs, _ = run_both(
        prog,
        threads=3,
        memory=mem,
        setup=lambda ex: ex.write_memory(0, x.tobytes()),
        inline_work=0,
    )
    ref = np.matmul(x, qm.dequantize(), dtype=np.float32)
    for ex in exs:
        for t in range(3):
            _close(_floats(ex, 0x8000 + t * 4 * rows * n, rows * n), ref)


def test_quantization_definition():
    f = np.array([[-1.0, 0.0, 0.5, 3.0]], np.float32)
    q = quantize(f)
    assert q.q.tolist() == [[0, 64, 96, 255]] and q.offset == np.float32(-1.0)
    assert q.scale == np.float32(255.0) / np.float32(4.0)
    back = dequantize(q.q, q.scale, q.offset)
    assert np.abs(back - f).max() <= 0.5 / q.scale + 1e-7
    assert quantize(np.full(3, 2.0, np.float32)).q.tolist() == [[0, 0, 0]]  # constant: scale 1
