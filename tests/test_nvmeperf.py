"""hil/nvmeperf.py: bench phases and rounds from a trace written here, record by record,
as the bridge writes them; the nightly's rules for the metrics it yields."""

from __future__ import annotations

import json

import pytest

from hil import nvmeperf
from hil.baseline import RULES, compare_metric
from hil.stats import Stats

BAR0 = 0xC0000000
SQ, CQ = BAR0 + nvmeperf.SQ1_DB, BAR0 + nvmeperf.CQ1_DB


class Trace:
    """Writes ``run`` records: the COM1 bytes of a line, doorbells, at chosen times."""

    def __init__(self, path):
        self.path, self.lines, self.seq = path, [json.dumps({"t": "start"})], 0

    def run(self, at, dt, requests):
        rows = []
        for kind, addr, value in requests:
            rows.append([self.seq, 0, 0, kind, 32, addr, value])
            self.seq += 1
        rec = {"t": "run", "at": at, "dt": dt, "n": 0, "requests": rows, "faults": []}
        self.lines.append(json.dumps(rec, separators=(",", ":")))

    def say(self, at, text):
        self.run(
            at, 0.0, [(nvmeperf.PORT_OUT, nvmeperf.COM1_THR, b) for b in (text + "\n").encode()]
        )

    def ring(self, at, dt, addr):
        self.run(at, dt, [(nvmeperf.MMIO_WRITE, addr, 1)])

    def save(self):
        self.path.write_text("\n".join(self.lines) + "\n")
        return self.path


def phase(t: Trace, at: float, qd: int, rounds: list[float]) -> float:
    t.say(at, f"bench qd {qd:08x} rounds {len(rounds):08x} start")
    for r in rounds:
        t.ring(at, 0.001, SQ)  # the round starts at the end of this run
        t.ring(at + 0.001 + r / 2, 0.0, CQ)  # an intermediate CQ doorbell
        t.ring(at + 0.001 + r - 0.0005, 0.0005, CQ)  # the last one ends the round
        at += 0.001 + r
    t.say(at, "bench done errors 00000000")
    return at + 0.01


def test_rounds_iops_and_latency_from_the_trace(tmp_path):
    t = Trace(tmp_path / "trace.jsonl")
    t.say(0.0, "\x01nvme: controller 00101b36 bdf 00000008 bar0 c0000000 irq 31")
    t.ring(0.5, 0.001, SQ)  # I/O before the bench (the block test's phases): not counted
    t.ring(0.6, 0.001, CQ)
    at = phase(t, 1.0, 1, [0.004] * 9 + [0.020])
    phase(t, at, 16, [0.010] * 4)
    (p1, p16) = nvmeperf.analyse(t.save(), roundtrip_s=0.0001)
    assert (p1["qd"], p1["rounds"], p1["errors"]) == (1, 10, 0)
    assert p1["lat_p50_ms"] == pytest.approx(4.0)
    assert p1["lat_p99_ms"] == pytest.approx(20.0)
    window = 10 * 0.001 + 9 * 0.004 + 0.020  # first SQ run's start .. last CQ run's end
    assert p1["iops"] == pytest.approx(10 / window)
    assert p1["mbps"] == pytest.approx(10 * 4096 / window / 1e6)
    assert p1["requests"] == 30  # three doorbells a round; the marker lines are outside
    assert p16["iops"] == pytest.approx(64 / (4 * 0.011))
    assert p16["lat_p50_ms"] == pytest.approx(10.0)
    m = nvmeperf.metrics(tmp_path)
    assert set(m) == set(nvmeperf.catalogue()) and m["nvme.qd16.lat_p99_ms"] == 10.0


def test_an_unfinished_phase_or_garbage_yields_no_metric(tmp_path):
    t = Trace(tmp_path / "trace.jsonl")
    t.say(0.0, "nvme: controller 00101b36 bdf 00000008 bar0 c0000000 irq 31")
    t.say(0.1, "bench qd 00000001 rounds 00000002 start")
    t.ring(0.2, 0.001, SQ)
    t.ring(0.3, 0.001, CQ)
    t.lines.append('{"t":"run","at":"soon","requests":[[1,2]]}')  # not the bridge's
    t.lines.append('{"t":"run","at":0.4,"dt":0.0,"requests":[[1, 0, 0, 4, 32, 5]]}')
    t.lines.append('{"t":"run","at":0.5,"dt":0.0,"requests":[[1, 0, 0, 2, 8, 1016, "x"]]}')
    t.lines.append('{"t":"run","at":0.5,"dt"')  # the trace was cut here: no end marker
    assert nvmeperf.analyse(t.save()) == []
    assert nvmeperf.metrics(tmp_path) == {}
    assert nvmeperf.metrics(tmp_path / "missing") == {}


def test_a_phase_without_the_controller_line_counts_no_rounds(tmp_path):
    t = Trace(tmp_path / "trace.jsonl")
    phase(t, 1.0, 1, [0.004] * 3)  # which doorbells are queue pair 1's is unknown
    (p,) = nvmeperf.analyse(t.save())
    assert p["rounds"] == 0 and nvmeperf.metrics(tmp_path) == {}


@pytest.mark.parametrize("qd", nvmeperf.QDS)
def test_nightly_fewer_iops_or_longer_rounds_are_regressions(qd):
    s = Stats.of
    for name in ("iops", "mbps"):
        rule = RULES[f"nvme.qd{qd}.{name}"]
        assert compare_metric(rule, s([1000]), s([500])).verdict == "regression"
        assert compare_metric(rule, s([1000]), s([1500])).verdict == "improvement"
        assert compare_metric(rule, s([1000]), s([900])).verdict == "same"  # within 25 %
    for name in ("lat_p50_ms", "lat_p99_ms"):
        rule = RULES[f"nvme.qd{qd}.{name}"]
        assert compare_metric(rule, s([10]), s([30])).verdict == "regression"
        assert compare_metric(rule, s([10]), s([3])).verdict == "improvement"
    assert set(nvmeperf.catalogue()) <= set(RULES)
