"""Posted writes through the real microkernel (TCG), issue 17.

The broker's checks apply unchanged to posted writes: a request with flags POSTED gets
exactly the answer the allow-list model gives its kind, width and address; the kernel
serves a thread's requests in ring order, so a read after a posted write sees it done;
and the whole loop -- pixel program, bridge, kernel, replay -- keeps them exact."""

from __future__ import annotations

import json
import random

import pytest

from hil.vgpu import layout as L

from .conftest import REPO
from .test_broker import COM1, DMA, allowed_model, booted, served_stats

pytestmark = pytest.mark.integration
POSTED = L.REQ_FLAGS["POSTED"]
SCR = 0x3FF  # COM1's scratch register: QEMU's 16550 keeps the byte, nothing else reads it


def test_posted_writes_get_exactly_the_policy_and_keep_their_order(tmp_path, image_cache):
    with booted(tmp_path, image_cache) as (bridge, ranges, console, m, lines):
        rng = random.Random(17)
        reqs = [
            (2, 8, SCR, 0x5A, POSTED),  # allowed posted write ...
            (1, 8, SCR, 0, 0),  # ... then a read that must see it
            (2, 32, 0xCF8, 0x80000000, POSTED),  # refused: PCI configuration address
            (4, 32, 0x1000, 0, POSTED),  # refused: page tables
            (4, 32, DMA[0] + 16, 0xC0FFEE, POSTED),  # allowed: the DMA window
            (3, 32, DMA[0] + 16, 0, 0),  # reads it back
        ]
        for _ in range(120):
            kind = rng.choice([2, 4])
            width = rng.choice([8, 16, 32, 64, rng.randrange(256)])
            addr = rng.choice(
                [rng.randrange(0x3F0, 0x408), rng.randrange(DMA[0] - 64, DMA[1] + 64)]
                + [rng.getrandbits(32)]
            )
            allowed = allowed_model(kind, width, addr, ranges)
            inside = COM1[0] <= addr < COM1[1] or DMA[0] <= addr < DMA[1]
            if allowed and not inside:
                continue  # an allowed write to a real device could start its DMA anywhere
            if kind == 2 and COM1[0] <= addr < COM1[1] and addr != SCR:
                continue  # keep the console's own registers alone
            reqs.append((kind, width, addr, rng.getrandbits(width if width <= 64 else 8), POSTED))
        answers = []
        for i in range(0, len(reqs), L.RING_ENTRIES):
            batch = reqs[i : i + L.RING_ENTRIES]
            answers += _post_batch(bridge, batch)
        for req, rsp in zip(reqs, answers, strict=True):
            want = allowed_model(req[0], req[1], req[2], ranges)
            assert rsp["status"] == (0 if want else 1), f"request {req}: got {rsp}"
        assert answers[1]["value"] == 0x5A  # the read after the posted write saw it
        assert answers[5]["value"] == 0xC0FFEE
        assert sum(r["status"] for r in answers) > 20  # refusals were exercised
        served_stats(console)
        assert m.poll() is None


def _post_batch(bridge, batch):
    """One ring's worth in one interrupt, flags set in each slot before req_head moves."""
    for i, r in enumerate(batch):
        slot = bridge.v.r.req_off + ((bridge.head + i) % L.RING_ENTRIES) * L.REQUEST.size
        L.REQUEST.put(bridge.v.buf, slot, "flags", r[4])
    answers = bridge.post([r[:4] for r in batch])
    for i in range(len(batch)):  # HostileBridge.post rewrote the other fields only
        slot = (
            bridge.v.r.req_off + ((bridge.head - len(batch) + i) % L.RING_ENTRIES) * L.REQUEST.size
        )
        assert L.REQUEST.get(bridge.v.buf, slot, "flags") == batch[i][4]
    return answers


def test_posted_writes_in_the_whole_loop(hil):
    """tests/programs/posted.pxs on the real bridge and kernel: the reads see the posted
    writes done (also past the 8 posting credits), the refused one is denied by the
    broker and faults its thread at the write, and the replay agrees on both backends."""
    sc = hil.scenario(f"""\
        profile: q35-tcg-vgpu
        timeout: 60
        gpu:
          program: {REPO / "tests" / "programs" / "posted.pxs"}
          reference: wgpu
        steps:
          - lines:
              - 'posted ok'
              - {{regex: '^!DENY kind=2 addr=cf8 width=20$'}}
            ordered: false
            timeout: 30
          - expect: {{regex: '^@gpu end state=4 '}}
        """)
    r = hil("run", str(sc))
    assert r.code == 0, r.out + r.err
    run = r.run
    g = run["gpu"]
    assert [x["divergence"] for x in g["reference"]] == [None, None]
    # thread 0: 3, then the burst of 12: 8 on credits, the 9th waits (its answer comes
    # after the 8 before it, so every credit is back when it resumes), 3 more; thread 1: 1
    assert g["posted"] == 3 + 8 + 3 + 1 and g["posted_denied"] == 1, g
    states = {t["thread"]: t["status"] for t in g["threads"]}
    assert states == {0: "HALTED", 1: "FAULTED"}
    b = json.loads((r.run_dirs[0] / "bridge.json").read_text())
    assert b["requests"] == b["responses"]
    log = (r.run_dirs[0] / "bridge.log").read_text()
    assert "posted write refused: thread 1" in log and "outp r2, r3, 32" in log
