"""The shipped programs: hello (COM1 driver), the parallel checksum, the char model."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from pxi_util import PROGRAMS

from pxi.asm import assemble_file
from pxi.backends import create
from pxi.charmodel import (
    COLS,
    LBUF,
    TEXT,
    framebuffer,
    image_weights,
    program_path,
    read_text,
    reference_generate,
    run_generation,
)
from pxi.devices import Bus, Com1, drive
from pxi.machine import FaultCode, RequestKind, Status

BACKENDS = ["numpy", pytest.param("wgpu", marks=pytest.mark.wgpu)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hello_prints_through_port_io(backend):
    prog = assemble_file(PROGRAMS / "hello.pxs")
    ex = create(backend, prog, 1, 4096)
    bus = Bus(com1=Com1(busy_polls=2))
    res = drive(ex, bus)
    assert bytes(bus.com1.output) == b"Hello from GPU OS!\n"
    outs = [r for r in res.requests if r.kind == RequestKind.PORT_OUT and r.address == 0x3F8]
    polls = [r for r in res.requests if r.kind == RequestKind.PORT_IN and r.address == 0x3FD]
    assert len(outs) == 19 + 1  # 19 characters + the divisor latch write
    assert len(polls) == 19 * 3  # every byte waited for two busy line-status reads
    assert bus.com1.lcr == 0x03 and bus.com1.divisor == 1 and bus.com1.fcr == 0xC7
    assert ex.state().status[0] == Status.HALTED


@pytest.mark.parametrize("backend", BACKENDS)
def test_hello_denied(backend):
    """A host that allows no ports: the first request is denied and the thread faults."""
    prog = assemble_file(PROGRAMS / "hello.pxs")
    ex = create(backend, prog, 1, 4096)
    bus = Bus(com1=Com1())
    bus.com1.handles = lambda port: False
    res = drive(ex, bus)
    assert [f.code for f in res.faults] == [FaultCode.DENIED]
    assert bus.denied[0].address == 0x3F9 and bytes(bus.com1.output) == b""


@pytest.mark.parametrize("backend", BACKENDS)
def test_checksum_1000_threads(backend):
    prog = assemble_file(PROGRAMS / "checksum.pxs")
    ex = create(backend, prog, 1000, 8192)
    bus = Bus()
    res = drive(ex, bus)
    data = (PROGRAMS / "records.txt").read_bytes()
    crcs = [zlib.crc32(data[i * 32 : i * 32 + 32]) for i in range(1000)]
    assert np.frombuffer(ex.read_memory(0, 4000), np.uint32).tolist() == crcs
    acc = 0
    for c in crcs:
        acc = ((acc << 5 | acc >> 27) & 0xFFFFFFFF) ^ c
    assert bytes(bus.com1.output) == f"crc fold {acc:08x}\n".encode()
    assert not res.faults and (ex.state().status == Status.HALTED).all()


@pytest.fixture(scope="module")
def charmodel():
    return assemble_file(program_path())


def _close(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.abs(a - b).max() <= 0.01 and np.corrcoef(a, b)[0, 1] >= 0.9999


@pytest.mark.wgpu
def test_charmodel_same_tokens_everywhere(charmodel):
    prompt, n = "The GPU ", 60
    ref, _ = reference_generate(charmodel, prompt, n)
    texts, fbs = [], []
    for backend in ("numpy", "wgpu"):
        ex, res, bus = run_generation(charmodel, backend, prompt, n)
        assert not res.faults and res.runaway is None
        texts.append(read_text(ex))
        assert bytes(bus.com1.output).decode() == ref
        fbs.append(framebuffer(ex))
    assert texts[0] == texts[1] == prompt + ref
    assert np.array_equal(fbs[0], fbs[1])
    # The framebuffer is the glyph atlas blitted at each character's cell.
    atlas = charmodel.pixels.astype("<u4").view(np.uint8)[charmodel.meta.symbols["font5x8"] * 4 :]
    for i, ch in enumerate(texts[0][:40]):
        code = ord(ch) if 32 <= ord(ch) < 127 else 32
        rows = atlas[(code - 32) * 8 : (code - 32) * 8 + 8]
        want = np.unpackbits(rows[:, None], axis=1) * 255
        r, c = divmod(i, COLS)
        assert np.array_equal(fbs[0][r * 8 : r * 8 + 8, c * 8 : c * 8 + 8], want), ch


@pytest.mark.parametrize("backend", BACKENDS)
def test_charmodel_logits_match_reference(charmodel, backend):
    _, logits = reference_generate(charmodel, "the cpu", 1)
    ex, res, _ = run_generation(charmodel, backend, "the cpu", 1)
    v = image_weights(charmodel).b2.shape[1]
    got = np.frombuffer(ex.read_memory(LBUF, 4 * v), np.float32)
    _close(got, logits[0])
    assert ex.read_memory(TEXT, 8) == b"the cpu" + read_text(ex)[-1].encode()
