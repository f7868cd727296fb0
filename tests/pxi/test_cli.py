"""The `pxi` command end to end (in-process through pxi.cli.main)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pxi_util import PROGRAMS

from pxi.cli import main
from pxi.image import load_png


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_asm_disasm_info(tmp_path, capsys):
    png = tmp_path / "hello.png"
    code, out, _ = run(capsys, "asm", str(PROGRAMS / "hello.pxs"), "-o", str(png))
    assert code == 0 and "64x2 pixels" in out
    code, out, _ = run(capsys, "disasm", str(png), "-o", str(tmp_path / "h.pxs"))
    assert code == 0 and "call uart_init" in (tmp_path / "h.pxs").read_text()
    code, out, _ = run(capsys, "asm", str(tmp_path / "h.pxs"), "-o", str(tmp_path / "h2.png"))
    assert np.array_equal(load_png(png).pixels, load_png(tmp_path / "h2.png").pixels)
    code, out, _ = run(capsys, "info", str(png))
    assert code == 0 and "code   main" in out and "data   message" in out and "sha256" in out
    code, out, _ = run(capsys, "isa")
    assert "`matmul rout, rin, rmat, rrows`" in out


@pytest.mark.parametrize("backend", ["numpy", pytest.param("wgpu", marks=pytest.mark.wgpu)])
def test_run_hello(capsys, backend):
    code, out, err = run(
        capsys, "run", str(PROGRAMS / "hello.pxs"), "--backend", backend, "--busy-polls", "1"
    )
    assert code == 0, err
    assert "Hello from GPU OS!\n" in out and "requests: 64 (port_in 38, port_out 26)" in out
    assert "thread 0: halted at pc 6 (x=6, y=0), 333 steps" in out and "r3 =0x0000002f" in out
    if backend == "wgpu":
        assert "backend: wgpu on " in out


def test_user_errors_are_one_paragraph(tmp_path, capsys):
    (tmp_path / "bad.pxs").write_text("nop\nadd r1, r2, r99\n")
    code, out, err = run(capsys, "asm", str(tmp_path / "bad.pxs"))
    assert (
        code == 2 and err.startswith("pxi: error: ") and "bad.pxs:2: 'r99' is not a register" in err
    )
    assert "Traceback" not in err
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    code, _, err = run(capsys, "run", str(tmp_path / "rgb.png"))
    assert code == 2 and "8-bit RGBA" in err
    code, _, err = run(capsys, "info", str(tmp_path / "missing.png"))
    assert code == 2 and "no such file" in err


def test_faults_and_runaway_exit_1(tmp_path, capsys):
    (tmp_path / "f.pxs").write_text("li r1, 3\nld32 r2, r1, 0\nhalt\n")
    code, _, err = run(capsys, "run", str(tmp_path / "f.pxs"))
    assert code == 1 and "thread 0: pc 1 (pixel x=1, y=0)" in err and "misaligned" in err
    (tmp_path / "loop.pxs").write_text("l: jmp l\n")
    code, _, err = run(capsys, "run", str(tmp_path / "loop.pxs"), "--max-steps", "5000")
    assert code == 1 and "still running after 5000 steps" in err and "pc 0 (pixel x=0, y=0)" in err


def test_mmio_and_events(tmp_path, capsys):
    (tmp_path / "m.pxs").write_text(
        "li32 r0, 0xfebf0000\nli r1, 0\nmrd r2, r0, 32\nmrd r3, r0, 32\nmwr r0, r3, 32\nwait r4, r1\nhalt\n"
    )
    code, out, err = run(
        capsys,
        "run",
        str(tmp_path / "m.pxs"),
        "--mmio",
        "0xfebf0000=7,9",
        "--event",
        "5",
        "--requests",
    )
    assert code == 0, err
    assert "r2 =0x00000007  r3 =0x00000009" in out and "r4 =0x00000005" in out
    assert "mmio_write 32 address=0xfebf0000 value=0x9" in out


def test_view_with_heatmap(tmp_path, capsys):
    out_png = tmp_path / "v.png"
    code, out, _ = run(capsys, "view", str(PROGRAMS / "hello.pxs"), "-o", str(out_png), "--heatmap")
    assert code == 0 and "heatmap of 276 executions" in out
    img = np.asarray(Image.open(out_png))
    assert img.shape == (2 * 8, 64 * 8 * 2 + 8, 3)
    heat = img[:, 64 * 8 + 8 :]
    assert heat[4, 4].any() and not heat[4 + 8, 4 + 8 * 63].any()  # executed vs never executed


def test_store_dedupes_matrices(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    (tmp_path / "a.pxs").write_text('halt\nW: .matrix "w.npy"\n')
    (tmp_path / "b.pxs").write_text('nop\nhalt\nW: .matrix "w.npy"\n')
    store = ["--store", str(tmp_path / "st")]
    code, out, _ = run(capsys, "store", "add", str(tmp_path / "a.pxs"), *store)
    assert "(3 new blob(s))" in out  # code, matrix, padding
    code, out, _ = run(capsys, "store", "add", str(tmp_path / "b.pxs"), *store)
    assert "(2 new blob(s))" in out  # the matrix was already there
    pid = out.split()[0]
    code, out, _ = run(capsys, "store", "get", pid[:10], "-o", str(tmp_path / "got.png"), *store)
    assert code == 0 and out.strip().endswith(pid)
    code, out, _ = run(capsys, "store", "ls", *store)
    assert len(out.strip().splitlines()) == 2
    code, _, err = run(capsys, "store", "get", "ffff", *store)
    assert code == 2 and "no program with id" in err


@pytest.mark.wgpu
def test_generate_png(tmp_path, capsys):
    png = tmp_path / "gen.png"
    code, out, err = run(
        capsys, "generate", "--backend", "wgpu", "--tokens", "30", "--png", str(png)
    )
    assert code == 0, err
    assert "text: 'The GPU " in out and "tokens/s" in out
    img = np.asarray(Image.open(png))
    assert img.shape == (64, 256) and img[:8, :64].any()


def test_doc_table_check(capsys):
    code, out, _ = run(capsys, "doc-table", "--check")
    assert code == 0
