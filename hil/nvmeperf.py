"""The pixel NVMe driver's random-read performance, as the GPU side saw it, from the trace.

One piece of code for ``scenarios/nvme.yaml`` (the nvme device kind records the metrics)
and ``benchmarks/nvme_bench.py`` (which also prints where the time goes).

The GPU has no clock, so the host times it from the bridge's trace (docs/vgpu.md,
"Trace"): every executor run has ``at`` (start, s since the bridge started) and ``dt``.
The block test marks each bench phase with console lines (docs/drivers.md)::

    bench qd 00000010 rounds 00000010 start
    bench done errors 00000000

and those lines are read back out of the same trace -- the COM1 transmit writes the
driver asked for (PORT_OUT to 0x3f8) -- so markers and doorbells share one clock and no
console timestamp has to be matched against the bridge's.  Inside a phase:

* a round starts at the end of the run that rang queue pair 1's SQ tail doorbell and
  ends at the end of the last run that rang its CQ head doorbell before the next SQ
  doorbell: a command's latency at QD1, the slowest of the QD commands at QD > 1;
* the window: from the start of the run that rang the first SQ doorbell to the end of
  the run that rang the last CQ doorbell; IOPS = QD x rounds / window, MB/s with 4 KiB
  reads;
* GPU execution = the ``dt`` of the runs in that window; mailbox = their requests x the
  bridge's median round trip.

Nothing in the trace is trusted to be well formed: a phase without its end marker, a
round without a CQ doorbell, a line that is not a marker are skipped, never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

COM1_THR = 0x3F8
PORT_OUT, MMIO_WRITE = 2, 4  # pxi.machine.RequestKind
SQ1_DB, CQ1_DB = 0x1008, 0x100C  # BAR0 offsets of queue pair 1's doorbells (CAP.DSTRD 0)
READ_BYTES = 4096
MAX_LINE = 256  # longer "lines" are not the driver's markers

_START = re.compile(r"^bench qd ([0-9a-f]{8}) rounds ([0-9a-f]{8}) start$")
_DONE = re.compile(r"^bench done errors ([0-9a-f]{8})$")
_BAR0 = re.compile(r"^nvme: controller [0-9a-f]{8} bdf [0-9a-f]{8} bar0 ([0-9a-f]{8}) irq ")

METRICS = {
    "iops": "4 KiB random reads per second by the pixel NVMe driver at queue depth {qd} "
    "(the block test's bench phase, timed from the vGPU trace)",
    "mbps": "MB/s (10^6 bytes) of those reads at queue depth {qd}",
    "lat_p50_ms": "median round latency at queue depth {qd}: SQ doorbell to the CQ doorbell "
    "after the round's last completion (QD1: one command's latency)",
    "lat_p99_ms": "99th percentile of that round latency at queue depth {qd}",
}
QDS = (1, 16)  # the queue depths scenarios/nvme.yaml measures


def catalogue() -> dict[str, str]:
    return {f"nvme.qd{qd}.{k}": v.format(qd=qd) for qd in QDS for k, v in METRICS.items()}


@dataclass
class Phase:
    """One bench phase: its queue depth and what the trace shows of it."""

    qd: int
    rounds_asked: int
    errors: int | None = None  # from the end marker; None while open
    rounds: list[float] = field(default_factory=list)  # seconds per round
    first: float | None = None  # the window's start
    last: float | None = None  # its end: the last round's end
    gpu_s: float = 0.0  # executor time inside the window
    requests: int = 0  # requests made inside it
    run_gpu_s: float = 0.0  # running totals since the window's start
    run_requests: int = 0

    def result(self, roundtrip_s: float) -> dict:
        span = (self.last - self.first) if self.rounds else 0.0
        reads = self.qd * len(self.rounds)
        return {
            "qd": self.qd,
            "rounds": len(self.rounds),
            "errors": self.errors,
            "iops": reads / span if span > 0 else float("nan"),
            "mbps": reads * READ_BYTES / span / 1e6 if span > 0 else float("nan"),
            "lat_p50_ms": 1e3 * quantile(self.rounds, 0.5),
            "lat_p99_ms": 1e3 * quantile(self.rounds, 0.99),
            "gpu_frac": self.gpu_s / span if span > 0 else float("nan"),
            "mailbox_frac": min(1.0, self.requests * roundtrip_s / span) if span > 0 else 0.0,
            "requests": self.requests,
        }


def quantile(v: list[float], p: float) -> float:
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]


def runs(trace: Path) -> list[dict]:
    """The trace's ``run`` records, without decoding the (large) memory records."""
    out = []
    with trace.open() as f:
        for line in f:
            if not line.startswith('{"t":"run"'):  # TraceWriter writes "t" first
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                break  # a cut trace: what came before still counts
            if rec.get("t") == "run":
                out.append(rec)
    return out


class _Tracker:
    """Walks the runs once: console text, bench phases, rounds."""

    def __init__(self):
        self.text = bytearray()
        self.bar0: int | None = None
        self.phases: list[Phase] = []
        self.open: Phase | None = None
        self.start = self.last_cq = None  # the current round

    def line(self, text: str) -> None:
        if m := _BAR0.match(text):
            self.bar0 = int(m[1], 16)
        elif m := _START.match(text):
            self.open = Phase(int(m[1], 16), int(m[2], 16))
            self.start = self.last_cq = None
        elif (m := _DONE.match(text)) and self.open is not None:
            self._close_round()
            self.open.errors = int(m[1], 16)
            self.phases.append(self.open)
            self.open = None

    def _close_round(self) -> None:
        if self.open is not None and self.start is not None and self.last_cq is not None:
            self.open.rounds.append(self.last_cq - self.start)
            self.open.last = self.last_cq
        self.start = self.last_cq = None

    def run(self, r: dict) -> None:
        try:
            at, dt, reqs = float(r["at"]), float(r["dt"]), r["requests"]
        except (KeyError, TypeError, ValueError):
            return
        end = at + dt
        p = self.open
        if p is not None and p.first is not None:
            p.run_gpu_s += dt
            p.run_requests += len(reqs)
        for req in reqs:
            if not isinstance(req, list) or len(req) not in (7, 8):  # trace v1, v2
                continue
            kind, addr, value = req[3], req[5], req[6]
            if kind == PORT_OUT and addr == COM1_THR and isinstance(value, int):
                self._byte(value & 0xFF)
            elif kind == MMIO_WRITE and self.open is not None and self.bar0 is not None:
                if addr == self.bar0 + SQ1_DB:
                    self._close_round()
                    self.start = end
                    if p.first is None:  # the window starts with the first round's run
                        p.first, p.run_gpu_s, p.run_requests = at, dt, len(reqs)
                elif addr == self.bar0 + CQ1_DB and self.start is not None:
                    self.last_cq = end
                    p.gpu_s, p.requests = p.run_gpu_s, p.run_requests

    def _byte(self, b: int) -> None:
        if b == 0x0A:
            self.line(self.text.decode("ascii", "replace").strip())
            self.text.clear()
        elif b >= 0x20 and len(self.text) < MAX_LINE:  # (the divisor latch write is 0x01)
            self.text.append(b)


def analyse(trace: Path, roundtrip_s: float = 0.0) -> list[dict]:
    """Every complete bench phase of the run, in order (see the module's docstring)."""
    t = _Tracker()
    for r in runs(trace):
        t.run(r)
    return [p.result(roundtrip_s) for p in t.phases]


def roundtrip_s(bridge_json: Path) -> float:
    """The bridge's median mailbox round trip (bridge.json), 0 when it has none."""
    try:
        return float(json.loads(bridge_json.read_text())["roundtrip_us"]["p50"]) / 1e6
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def metrics(run_dir: Path) -> dict[str, float]:
    """The ``nvme.qd<N>.*`` metrics of a run directory (empty without bench phases)."""
    trace = run_dir / "trace.jsonl"
    if not trace.exists():
        return {}
    out: dict[str, float] = {}
    for p in analyse(trace):
        if p["qd"] in QDS and p["rounds"]:
            for k in METRICS:
                out[f"nvme.qd{p['qd']}.{k}"] = round(p[k], 3)
    return out
