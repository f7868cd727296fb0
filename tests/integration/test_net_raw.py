"""The pixel e1000 driver on a raw network (pxi/programs/net/pingtest.pxs,
scenarios/net-raw.yaml): QEMU's -netdev dgram, the host end hil's raw peer.  Under TCG:
the shipped scenario (pings answered and checked by the peer, bad frames counted by
kind, the ring filled by a burst, the reference replay, the pcap check); a peer that
expects replies the guest never sends (the run fails, the evidence quoted); a peer that
cannot start (an infrastructure error, not a test failure)."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import REPO, Hil, assert_no_leftovers

PINGTEST = REPO / "pxi" / "programs" / "net" / "pingtest.pxs"


def shipped(hil: Hil):
    """scenarios/net-raw.yaml as it is, but for its name and the program's path."""
    text = (REPO / "scenarios" / "net-raw.yaml").read_text()
    text = re.sub(r"(?m)^name: .*\n", "", text)
    text = text.replace("../pxi/programs/net/pingtest.pxs", str(PINGTEST))
    return hil.scenario(text)


@pytest.fixture(scope="module")
def happy(tmp_path_factory, image_cache):
    hil = Hil(tmp_path_factory.mktemp("netraw"), image_cache)
    r = hil("run", str(shipped(hil)), timeout=300)
    yield r
    assert_no_leftovers(hil)


def serial(r) -> str:
    return (r.run_dirs[0] / "serial.log").read_text()


def test_pings_are_answered_and_bad_frames_counted_by_kind(happy):
    r = happy
    assert r.code == 0, r.out + r.err
    s = serial(r)
    assert "raw: icmp echoed 00000009 burst frames 00000018 discarded 00000000" in s, s
    # 2 runts, 1 frame past the MTU; 24 burst frames through 7 usable descriptors: 3 times
    # full; QEMU held back what found no descriptor (rnbc 0) and dropped the 1600-byte
    # frame itself, counting it in ROC
    assert re.search(
        r"net: drops rx_short 00000002 rx_long 00000001 rx_csum 0+ rx_err 0+ rx_late 0+ "
        r"rx_dup 0+ rx_other 0+ rx_ring_full 00000003 tx_too_long 0+ tx_not_done 0+\n",
        s,
    ), s
    assert re.search(r"e1000: device rnbc 0+ mpc 0+ icr_rxo 00 .* roc 00000001 ruc 0+\n", s), s
    peer = r.run["raw_peer"]
    assert peer["ok"] and peer["phase"] == "done", peer
    assert [p["seq"] for p in peer["pings"] if p["ok"]] == list(range(1, 10))
    assert {p["size"] for p in peer["pings"]} == {0, 56, 1472}
    m = r.run["metrics"]
    assert m["net.ping.replies"] == 9 and 0 < m["net.ping.rtt_ms.p50"] <= m["net.ping.rtt_ms.p99"]


def test_the_capture_and_the_reference_replay_agree(happy):
    r = happy
    checks = {c["name"]: c for c in r.run["checks"]}
    assert checks["pcap"]["outcome"] == "pass", checks
    assert (
        "9 ICMP echo requests with id 0x4242 and 9 replies, payloads intact"
        in (checks["pcap"]["reason"])
    )
    assert "an ARP reply from 52:54:00:12:34:56" in checks["pcap"]["reason"]
    assert [x["divergence"] for x in r.run["gpu"]["reference"]] == [None, None]
    b = json.loads((r.run_dirs[0] / "bridge.json").read_text())
    assert b["external_write_bytes"] > 3 * 1472  # the NIC's DMA of the large pings


NEGATIVE = f"""\
profile: q35-tcg-vgpu
timeout: 120
devices:
  - nic:
      raw_peer:
        guest: 10.0.3.16
        pings: {{before: 1, after: 0, sizes: [56], timeout_s: 3}}
        timeout_s: 3
gpu:
  program: {PINGTEST}
  defines: {{GUEST_IP: 0x0a00030f}}
  reference: none
steps:
  - expect: '@gpu start'
    timeout: 30
  - expect: 'raw: icmp echoed 00000000 burst frames 00000000 discarded 00000000'
    timeout: 90
  - expect: {{regex: '^@gpu end state=3 '}}
    timeout: 90
  - send: shutdown
  - exit: shutdown
"""


def test_a_peer_expecting_replies_the_guest_never_sends_fails_the_run(hil):
    """The scenario's peer pings 10.0.3.16; the guest is 10.0.3.15 and answers neither
    the ARP nor the echo request (correctly): every step passes, the peer's verdict fails
    the run, quoting the request that went unanswered."""
    r = hil("run", str(hil.scenario(NEGATIVE)), timeout=200)
    assert r.code == 1, r.out + r.err
    assert all(s["status"] == "passed" for s in r.run["steps"]), r.run["steps"]
    v = r.run["verdict"]
    assert v["reason"].startswith(
        "the raw network peer saw a fault: no ARP reply for 10.0.3.16 within 3 s (the guest "
        "announced 10.0.3.15 at 52:54:00:12:34:56); the request: ff ff ff ff ff ff 02 00"
    ), v
    assert any(
        re.match(
            r"echo request id 0x4242 seq 1 \(56 bytes\) to 10\.0\.3\.16: no reply within 3 s; "
            r"the request: 52 54 00 12 34 56 02 00 00 00 00 01 08 00 45 00 00 54",
            e,
        )
        for e in v["evidence"]
    ), v
    assert "rx_other 00000002" in serial(r)  # the ARP and the echo request, not for it
    assert "Traceback" not in r.out + r.err


def test_a_peer_that_cannot_start_is_an_infrastructure_error(hil, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dpkt.py").write_text("raise ImportError('dpkt is broken in this install')\n")
    env = {**hil.env, "PYTHONPATH": f"{broken}:{REPO}"}
    r = hil("run", str(hil.scenario(NEGATIVE)), env=env, timeout=120)
    assert r.code == 3, r.out + r.err
    said = r.out + r.err
    assert "the raw network peer did not start: it said nothing; ImportError: dpkt is broken" in (
        said
    ), said
    assert "Traceback" not in said
