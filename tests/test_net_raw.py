"""The raw network's pieces that need no QEMU: raw_peer validation (file:line and the
fix), its QEMU option, the raw peer's script against a guest played here over the same
unix datagram sockets QEMU uses, the bounded parse of its verdict, the pcap check's ICMP
assertions."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path

import dpkt
import pytest

from hil import devices as dev  # noqa: F401  (registers the kinds before hil.checks.pcap)
from hil import rawresult
from hil.checks import pcap
from hil.devices.base import AfterContext, AttachContext
from hil.devices.nic import NicKind, RawPeer
from hil.errors import InfraError
from hil.rawpeer import Frames, payload
from hil.rawspec import Pings, RawPeerSpec

from .test_net import problems

GUEST_MAC = bytes.fromhex("525400123456")
PEER_MAC = bytes.fromhex("020000000001")
GUEST_IP = socket.inet_aton("10.0.3.15")
PEER_IP = socket.inet_aton("10.0.3.1")


NIC = "devices:\n  - nic:\n      raw_peer:\n"


@pytest.mark.parametrize(
    "body, line, needle",
    [
        (NIC + "        pings: {before: 1}\n", 8, "required key 'guest'"),
        (NIC + "        guest: 10.0.3\n", 8, "not an IPv4 address in dotted form"),
        (NIC + "        guest: 10.0.3.1\n", 8, "cannot both be 10.0.3.1"),
        (NIC + "        guest: 10.0.3.15\n        burst: 5000\n", 9, "0 to 1024"),
        (NIC + "        guest: 10.0.3.15\n        pings: {sizes: [1473]}\n", 9, "0 to 1472"),
        (NIC + "        guest: 10.0.3.15\n        pings: {sizes: []}\n", 9, "payload sizes"),
        (NIC + "        guest: 10.0.3.15\n        ping: {}\n", 9, "did you mean 'pings'"),
        (NIC + "        guest: 10.0.3.15\n        mac: '02:00'\n", 9, "not a MAC address"),
        (
            "devices:\n  - nic:\n      udp_echo: {port: 4000}\n      raw_peer: {guest: 10.0.3.15}\n",
            8,
            "a NIC is on one network",
        ),
        ("checks:\n  - pcap: {device: nic0, icmp_echo: {id: 70000, count: 1}}\n", 6, "0 to 65535"),
        ("checks:\n  - pcap: {device: nic0, icmp_echo: {id: 1}}\n", 6, "'count'"),
    ],
)
def test_bad_raw_peer_input_names_file_line_and_fix(tmp_path, body, line, needle):
    found = problems(tmp_path, body)
    assert any(f"s.yaml:{line}:" in p and needle in p for p in found), found


def test_the_raw_network_is_a_dgram_netdev_with_escaped_paths(tmp_path):
    class Helper:
        dir = Path("/tmp/a,b")

    spec = RawPeerSpec("10.0.3.15")
    ctx = AttachContext(tmp_path, name="nic0", helper=Helper())
    from hil.devices.nic import Nic

    NicKind().attach(Nic(raw_peer=spec), ctx)
    netdev = ctx.args[ctx.args.index("-netdev") + 1]
    assert netdev == (
        "dgram,id=nic0,local.type=unix,local.path=/tmp/a,,b/qemu.sock,"
        "remote.type=unix,remote.path=/tmp/a,,b/peer.sock"
    )
    assert "filter-dump,id=nic0dump,netdev=nic0" in " ".join(ctx.args)


# ---------------------------------------------------------------- the peer's script
class Guest:
    """The guest's side of the sockets, played here: announces itself, answers ARP and
    echo requests (one reply spoiled on request), takes the rest, stops at QUIT."""

    def __init__(self, sock: socket.socket, peer_path: str, spoil_seq: int | None = None):
        self.sock, self.peer, self.spoil = sock, peer_path, spoil_seq
        self.f = Frames(GUEST_MAC, GUEST_IP)
        self.got: list[bytes] = []

    def serve(self, deadline: float) -> None:
        self.sock.sendto(self.f.arp(1, b"\xff" * 6, GUEST_IP), self.peer)
        while time.monotonic() < deadline:
            try:
                fr = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.got.append(fr)
            if fr[12:14] == b"\x08\x06" and fr[38:42] == GUEST_IP:
                self.sock.sendto(self.f.arp(2, fr[6:12], fr[28:32]), self.peer)
            elif fr[12:14] == b"\x08\x00" and fr[23] == 1 and fr[34] == 8 and self.sane(fr):
                self.sock.sendto(self.reply(fr), self.peer)
            elif fr[12:14] == b"\x08\x00" and fr[23] == 17 and fr[42:46] == b"QUIT":
                return

    @staticmethod
    def sane(fr: bytes) -> bool:  # what the pixel driver answers: an echo within the MTU
        total = struct.unpack("!H", fr[16:18])[0]
        return 28 <= total <= len(fr) - 14 and len(fr) <= 1514

    def reply(self, req: bytes) -> bytes:
        total = struct.unpack("!H", req[16:18])[0]
        msg = bytearray(req[34 : 14 + total])
        seq = struct.unpack("!H", msg[6:8])[0]
        msg[0] = 0
        msg[2:4] = b"\0\0"
        if seq == self.spoil:
            msg[-1] ^= 0xFF
        msg[2:4] = struct.pack("!H", dpkt.in_cksum(bytes(msg)))
        return self.f.eth(req[6:12], 0x0800, self.f.ipv4(req[26:30], 1, bytes(msg)))


def run_peer(tmp_path, spec: RawPeerSpec, spoil_seq=None) -> tuple[dict, Guest]:
    with RawPeer(tmp_path, spec) as peer:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(peer.qemu_socket))
            s.settimeout(0.2)
            assert (peer.dir / ".hil-owner").exists()  # claimed: a SIGKILLed hil's is removed
            g = Guest(s, str(peer.peer_socket), spoil_seq)
            g.serve(time.monotonic() + 30)
            deadline = time.monotonic() + 10
            while not (tmp_path / rawresult.RESULT).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        sock_dir = peer.dir
    assert peer.dir is None and peer.proc is None and not sock_dir.exists()  # all gone
    return rawresult.load(tmp_path / rawresult.RESULT), g


SPEC = RawPeerSpec(
    "10.0.3.15",
    pings=Pings(before=2, after=1, id=0x4242, sizes=(0, 1472), timeout_s=5),
    runts=2,
    long=1,
    oversize=1,
    burst=5,
    timeout_s=5,
    start_timeout_s=10,
)


def test_the_peer_runs_its_script_and_checks_every_reply(tmp_path):
    r, g = run_peer(tmp_path, SPEC)
    assert r["ok"] and r["phase"] == "done", r
    assert r["guest_mac"] == "52:54:00:12:34:56" and r["announced"] == "10.0.3.15"
    assert [(p["seq"], p["size"], p["ok"]) for p in r["pings"]] == [
        (1, 0, True),
        (2, 1472, True),
        (3, 0, True),
    ]
    assert r["sent"] == {"runts": 2, "long": 1, "oversize": 1, "burst": 5}
    sizes = [len(f) for f in g.got]
    # ARP, ping 1, ping 2, two runts (42 and 38 bytes), 1519, 1600, 5 x burst, ping 3, QUIT
    assert sizes[:7] == [42, 42, 1514, 42, 38, 1519, 1600], sizes
    burst = [f for f in g.got if f[42:46] == b"BRST"]
    assert [struct.unpack("!II", f[46:54]) for f in burst] == [(i, 5) for i in range(5)]
    runt = g.got[3]
    assert struct.unpack("!H", runt[16:18])[0] == 84  # claims more than its 42 bytes


def test_a_spoiled_reply_is_a_failure_that_quotes_it(tmp_path):
    r, _ = run_peer(tmp_path, SPEC, spoil_seq=2)
    assert not r["ok"] and r["phase"] == "done"
    (why,) = r["failures"]
    assert why.startswith("echo request id 0x4242 seq 2 (1472 bytes) to 10.0.3.15: the reply ")
    assert "does not carry the request's payload (they differ from byte 1471)" in why
    assert "the reply: 52 54 00 12 34 56" not in why and "; the reply: 02 00 00 00 00 01" in why
    assert [p["ok"] for p in r["pings"]] == [True, False, True]


def test_no_announcement_is_a_failure_not_a_hang(tmp_path):
    spec = RawPeerSpec("10.0.3.15", start_timeout_s=1)
    with RawPeer(tmp_path, spec):
        deadline = time.monotonic() + 10
        while not (tmp_path / rawresult.RESULT).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    r = rawresult.load(tmp_path / rawresult.RESULT)
    assert not r["ok"] and r["phase"] == "announce"
    assert "no gratuitous ARP from the guest within 1 s" in r["failures"][0]


def test_a_peer_that_cannot_start_is_an_infrastructure_error(tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dpkt.py").write_text("raise ImportError('dpkt is broken here')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken))
    peer = RawPeer(tmp_path, RawPeerSpec("10.0.3.15"))
    with pytest.raises(InfraError, match="the raw network peer did not start: it said nothing"):
        with peer:
            pass
    assert peer.dir is None and peer.proc is None
    assert "dpkt is broken here" in (tmp_path / "raw-peer.stderr").read_text()


# ---------------------------------------------------------------- its verdict, read back
GOOD = {
    "version": 1,
    "ok": True,
    "phase": "done",
    "failures": [],
    "guest_mac": "52:54:00:12:34:56",
    "announced": "10.0.3.15",
    "frames_in": 5,
    "sent": {"runts": 1, "long": 0, "oversize": 0, "burst": 3},
    "pings": [
        {"seq": 1, "id": 1, "size": 56, "rtt_ms": 2.0, "ok": True},
        {"seq": 2, "id": 1, "size": 56, "rtt_ms": 4.0, "ok": True},
        {"seq": 3, "id": 1, "size": 56, "rtt_ms": 9.0, "ok": True},
    ],
}


def after(tmp_path, doc) -> tuple[list, AfterContext]:
    path = tmp_path / rawresult.RESULT
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    ctx = AfterContext(plan=None, run_dir=tmp_path, lines=[], outcome="pass")
    return rawresult.collect(ctx, path), ctx


def test_a_good_verdict_gives_the_ping_metrics(tmp_path):
    found, ctx = after(tmp_path, GOOD)
    assert found == []
    assert ctx.metrics == {
        "net.ping.replies": 3,
        "net.ping.rtt_ms.p50": 4.0,
        "net.ping.rtt_ms.p99": 9.0,
    }
    assert ctx.sections["raw_peer"]["sent"]["burst"] == 3


def test_a_failing_verdict_fails_the_run_with_the_evidence(tmp_path):
    bad = {**GOOD, "ok": False, "failures": ["echo request ... no reply", "second"]}
    (f,), _ = after(tmp_path, bad)
    assert f.outcome == "fail" and f.evidence == bad["failures"]
    assert f.reason == "the raw network peer saw a fault: echo request ... no reply (and 1 more)"


@pytest.mark.parametrize(
    "doc, needle",
    [
        (b"{", "not JSON"),
        (b" " * (rawresult.MAX_BYTES + 1), "larger than"),
        ({**GOOD, "version": 2}, "not a version-1"),
        ({**GOOD, "ok": "yes"}, "'ok' is str"),
        ({**GOOD, "phase": "elsewhere"}, "unknown phase"),
        ({**GOOD, "pings": [{**GOOD["pings"][0], "rtt_ms": -1}]}, "not a time in ms"),
        ({**GOOD, "pings": [{**GOOD["pings"][0], "rtt_ms": None}]}, "ok without a round trip"),
        ({**GOOD, "pings": [{**GOOD["pings"][0], "seq": 1 << 40}]}, "outside 0..65535"),
        ({**GOOD, "failures": [1]}, "'failures' is not a list"),
    ],
)
def test_a_malformed_verdict_is_an_error_not_a_traceback(tmp_path, doc, needle):
    (f,), _ = after(tmp_path, doc)
    assert f.outcome == "error" and needle in f.reason, f.reason


def test_a_missing_verdict_is_an_error(tmp_path):
    ctx = AfterContext(plan=None, run_dir=tmp_path, lines=[], outcome="pass")
    (f,) = rawresult.collect(ctx, tmp_path / rawresult.RESULT)
    assert f.outcome == "error" and "the raw peer wrote no result" in f.reason


# ---------------------------------------------------------------- pcap: ICMP echo
def pings(n: int, spoil: int | None = None, drop: int | None = None) -> list[bytes]:
    peer, guest = Frames(PEER_MAC, PEER_IP), Frames(GUEST_MAC, GUEST_IP)
    out = []
    for seq in range(1, n + 1):
        data = payload(seq, 32)
        out.append(peer.echo_request(GUEST_MAC, GUEST_IP, 0x4242, seq, data))
        if seq == drop:
            continue
        back = data if seq != spoil else data[:-1] + b"\0"
        msg = struct.pack("!BBHHH", 0, 0, 0, 0x4242, seq) + back
        msg = msg[:2] + struct.pack("!H", dpkt.in_cksum(msg)) + msg[4:]
        out.append(guest.eth(PEER_MAC, 0x0800, guest.ipv4(PEER_IP, 1, msg)))
    return out


def judge(tmp_path, frames, **kw):
    with (tmp_path / "nic0.pcap").open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, f in enumerate(frames):
            w.writepkt(f, ts=1000.0 + i / 100)
    ctx = AfterContext(
        plan=None, run_dir=tmp_path, lines=[], outcome="pass", artifacts={"nic0.pcap": "nic0.pcap"}
    )
    return pcap.PcapKind().run_post(pcap.PcapCheck("nic0", **kw), ctx)


def test_icmp_echoes_in_a_capture_pass(tmp_path):
    f = judge(tmp_path, pings(3), icmp_id=0x4242, icmp_count=3, checksums=True)
    assert f.outcome == "pass", f.reason
    assert "3 ICMP echo requests with id 0x4242 and 3 replies, payloads intact" in f.reason
    assert "6 IPv4 frames with correct checksums" in f.reason


def test_a_missing_or_spoiled_icmp_reply_is_quoted(tmp_path):
    f = judge(tmp_path, pings(3, drop=2), icmp_id=0x4242, icmp_count=3)
    assert f.outcome == "fail" and "2 ICMP echo replies with id 0x4242, the scenario expects 3" in (
        f.reason
    )
    f = judge(tmp_path, pings(3, spoil=2), icmp_id=0x4242, icmp_count=3)
    assert f.outcome == "fail" and "ICMP echo seq 2: the reply does not carry" in f.reason
    assert "ICMP 10.0.3.15 -> 10.0.3.1 echo reply id 0x4242 seq 2 32 bytes" in f.reason


def test_a_bad_icmp_checksum_is_found(tmp_path):
    frames = pings(1)
    bad = bytearray(frames[1])
    bad[50] ^= 0x01  # a payload byte: only the ICMP checksum covers it
    f = judge(tmp_path, [frames[0], bytes(bad)], checksums=True)
    assert f.outcome == "fail" and "bad ICMP checksum: frame 1 at 0.010 s" in f.reason


def test_a_runt_is_not_judged_by_what_its_header_claims(tmp_path):
    runt = Frames(PEER_MAC, PEER_IP).echo_request(GUEST_MAC, GUEST_IP, 1, 1, b"", total=84)
    f = judge(tmp_path, [runt], checksums=True)
    assert f.outcome == "pass", f.reason
    assert os.path.getsize(tmp_path / "nic0.pcap") > 0
