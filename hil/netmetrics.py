"""Network metrics of a run of the pixel e1000 driver, from the vGPU bridge's trace.

The GPU has no clock; the bridge's trace times every executor run (``at``, ``dt``:
seconds since the bridge started) and lists the requests each run posted.  A *round*
of the echo test starts when the driver's owner thread writes TDT (one doorbell for
every datagram of the round) and ends when it writes RDT, which it does once every echo
of the round has been received and verified by the workers (or given up as lost).
So ``net.round_ms`` is the UDP round trip as the GPU driver completes it: send ->
slirp -> the host's peer -> slirp -> DMA into VRAM -> seen by a poll -> verified.

The driver's first four TDT writes are its bring-up (TDT = 0 when the ring is set up,
then DHCP DISCOVER, REQUEST and the ARP request for 10.0.2.2:
pxi/programs/net/echotest.pxs); they are left out.  The e1000's BAR0 comes from the
driver's own line ``e1000: controller ... bar0 X``.
"""

from __future__ import annotations

import re
from pathlib import Path

BAR0 = re.compile(r"^e1000: controller [0-9a-f]{8} bdf [0-9a-f]{8} bar0 ([0-9a-f]{8})")
SENT = re.compile(r"^udp: sent ([0-9a-f]{8}) echoed ok ([0-9a-f]{8}) ")
MMIO_WRITE = 4
TDT, RDT = 0x3818, 0x2818
BRING_UP = 4  # TDT writes before the echo rounds: ring setup (TDT = 0) + 3 frames


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def doorbells(trace: Path, bar0: int) -> list[tuple[float, int]]:
    """(time the run that posted it ended, register) for every TDT/RDT write."""
    from .vgpu import trace as tr

    out = []
    for rec in tr.read(trace):
        if rec.get("t") != "run":
            continue
        end = rec["at"] + rec["dt"]
        for _seq, _th, _pc, kind, _w, addr, _v, *_posted in rec.get("requests", ()):
            if kind == MMIO_WRITE and addr - bar0 in (TDT, RDT):
                out.append((end, addr - bar0))
    return out


def rounds(bells: list[tuple[float, int]]) -> list[float]:
    """Seconds from each echo round's TDT write to the RDT write that ends it."""
    tdt = [i for i, (_, reg) in enumerate(bells) if reg == TDT][BRING_UP:]
    out = []
    for i in tdt:
        end = next((t for t, reg in bells[i + 1 :] if reg == RDT), None)
        if end is not None:
            out.append(end - bells[i][0])
    return out


def metrics(run_dir: Path, lines) -> dict[str, float]:
    bar0 = echoed = None
    for ln in lines:
        if m := BAR0.match(ln.text):
            bar0 = int(m[1], 16)
        elif m := SENT.match(ln.text):
            echoed = int(m[2], 16)
    trace = run_dir / "trace.jsonl"
    if bar0 is None or not trace.exists():
        return {}
    try:
        times = rounds(doorbells(trace, bar0))
    except Exception:  # a cut or unreadable trace: the reference check reports it
        return {}
    if not times:
        return {}
    ms = sorted(t * 1000 for t in times)
    out = {
        "net.rounds": len(ms),
        "net.round_ms.p50": round(quantile(ms, 0.5), 3),
        "net.round_ms.p99": round(quantile(ms, 0.99), 3),
    }
    if echoed:
        # datagrams out and back per second of echo rounds (the time between rounds,
        # building and verifying, is not in it: see net.round_ms)
        out["net.packets_per_s"] = round(2 * echoed / sum(times), 1)
    return out
