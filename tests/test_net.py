"""The network pieces that need no QEMU: nic/pcap validation (file:line and the fix),
the pcap check on captures written here with dpkt, the UDP echo peer's lifetime."""

from __future__ import annotations

import socket
import struct
import textwrap
from pathlib import Path

import dpkt
import pytest

from hil import devices as dev  # noqa: F401  (registers the kinds before hil.checks.pcap)
from hil.checks import pcap
from hil.devices.base import AfterContext
from hil.devices.nic import EchoPeer
from hil.errors import InfraError
from hil.scenario import load_scenario
from hil.yamlsrc import ValidationError

GUEST = bytes.fromhex("525400123456")
HOST = bytes.fromhex("52550a000202")


def problems(tmp_path: Path, body: str) -> list[str]:
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nprofile: q35-tcg-bios\nsteps:\n  - expect: x\n" + textwrap.dedent(body))
    with pytest.raises(ValidationError) as e:
        load_scenario(p)
    return e.value.problems


@pytest.mark.parametrize(
    "body, line, needle",
    [
        ("devices:\n  - nic: {model: rtl8139}\n", 6, "is not one of e1000, virtio-net"),
        ("devices:\n  - nic: {udp_echo: {port: 80}}\n", 6, "1024 to 65535"),
        ("devices:\n  - nic: {udp_echo: {prot: 4000}}\n", 6, "prot"),
        ("checks:\n  - pcap: {device: nic0, arp_reply_from: 'zz:55'}\n", 6, "not a MAC address"),
        ("checks:\n  - pcap: {device: nic0, udp_echo: {port: 0, count: 1}}\n", 6, "not a UDP port"),
        ("checks:\n  - pcap: {device: nic0, udp_echo: {port: 9}}\n", 6, "'count'"),
        ("checks:\n  - pcap: {device: nic0, checksum: true}\n", 6, "did you mean 'checksums'"),
    ],
)
def test_bad_network_input_names_file_line_and_fix(tmp_path, body, line, needle):
    found = problems(tmp_path, body)
    assert any(f"s.yaml:{line}:" in p and needle in p for p in found), found


def ip_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = len(u)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, data=u)
    ip.len = len(ip)
    return bytes(ip)  # dpkt fills in both checksums


def eth(src: bytes, dst: bytes, kind: int, body: bytes) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=kind, data=body))


def capture(path: Path, frames: list[bytes]) -> None:
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, f in enumerate(frames):
            w.writepkt(f, ts=1000.0 + i / 100)


def arp_reply() -> bytes:
    a = dpkt.arp.ARP(
        op=2,
        sha=HOST,
        spa=socket.inet_aton("10.0.2.2"),
        tha=GUEST,
        tpa=socket.inet_aton("10.0.2.15"),
    )
    return eth(HOST, GUEST, 0x0806, bytes(a))


def echo(n: int, port: int = 7777, corrupt: int | None = None) -> list[bytes]:
    out = []
    for seq in range(n):
        p = struct.pack("!I", seq) + bytes(range(20))
        back = p if seq != corrupt else p[:5] + b"\xff" + p[6:]
        out.append(eth(GUEST, HOST, 0x0800, ip_udp("10.0.2.15", "10.0.2.2", 40000, port, p)))
        out.append(eth(HOST, GUEST, 0x0800, ip_udp("10.0.2.2", "10.0.2.15", port, 40000, back)))
    return out


def judge(tmp_path, frames, **kw):
    capture(tmp_path / "nic0.pcap", frames)
    spec = pcap.PcapCheck("nic0", **kw)
    ctx = AfterContext(
        plan=None, run_dir=tmp_path, lines=[], outcome="pass", artifacts={"nic0.pcap": "nic0.pcap"}
    )
    return pcap.PcapKind().run_post(spec, ctx)


def test_a_good_capture_passes(tmp_path):
    f = judge(
        tmp_path,
        [arp_reply(), *echo(3)],
        arp_reply_from="52:55:0a:00:02:02",
        echo_port=7777,
        echo_count=3,
        checksums=True,
    )
    assert f.outcome == "pass", f.reason
    assert "3 UDP datagrams to port 7777 and 3 back in order, payloads intact" in f.reason


def test_a_missing_arp_reply_quotes_the_arp_frames(tmp_path):
    f = judge(tmp_path, [arp_reply()], arp_reply_from="52:55:0a:00:02:03")
    assert f.outcome == "fail"
    assert "no ARP reply from 52:55:0a:00:02:03 among 1 ARP frames" in f.reason
    assert "frame 0 at 0.000 s (42 bytes): ARP reply 52:55:0a:00:02:02 10.0.2.2" in f.reason


def test_a_changed_payload_names_the_byte_and_both_frames(tmp_path):
    f = judge(tmp_path, echo(3, corrupt=1), echo_port=7777, echo_count=3)
    assert f.outcome == "fail"
    assert (
        "UDP echo 1: the reply does not carry the request's payload (they differ from byte 5)"
        in f.reason
    )
    assert "frame 2 at 0.020 s" in f.reason and "frame 3 at 0.030 s" in f.reason


def test_a_wrong_count_quotes_the_extra_frame(tmp_path):
    f = judge(tmp_path, echo(3), echo_port=7777, echo_count=2)
    assert (
        f.outcome == "fail" and "3 UDP datagrams to port 7777, the scenario expects 2" in f.reason
    )
    assert "the first beyond them: frame 4 at 0.040 s" in f.reason


def test_bad_checksums_are_found(tmp_path):
    good = echo(1)[0]
    bad_ip = bytearray(good)
    bad_ip[24] ^= 0xFF  # the IPv4 header checksum
    bad_udp = bytearray(good)
    bad_udp[45] ^= 0x01  # a payload byte: only the UDP checksum covers it
    for frame, what in ((bad_ip, "bad IPv4 header checksum"), (bad_udp, "bad UDP checksum")):
        f = judge(tmp_path, [good, bytes(frame)], checksums=True)
        assert f.outcome == "fail" and what in f.reason and "frame 1 at 0.010 s" in f.reason


def test_no_capture_or_a_broken_one_fails_clearly(tmp_path):
    ctx = AfterContext(plan=None, run_dir=tmp_path, lines=[], outcome="pass", artifacts={})
    f = pcap.PcapKind().run_post(pcap.PcapCheck("nic1"), ctx)
    assert f.outcome == "fail" and "no capture of a NIC named 'nic1'" in f.reason
    (tmp_path / "nic0.pcap").write_bytes(b"\xd4\xc3\xb2\xa1 not a pcap")
    ctx.artifacts["nic0.pcap"] = "nic0.pcap"
    f = pcap.PcapKind().run_post(pcap.PcapCheck("nic0", checksums=True), ctx)
    assert f.outcome == "fail" and "cannot read the capture" in f.reason


def test_the_peer_echoes_and_always_stops(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with EchoPeer(tmp_path, port) as peer:
        pid = peer.proc.pid
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(b"ping 1", ("127.0.0.1", port))
            assert c.recvfrom(100)[0] == b"ping 1"
    assert peer.proc is None and peer.stats()["datagrams"] == 1
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_a_taken_port_is_an_infrastructure_error(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(InfraError, match=f"cannot listen on 127.0.0.1:{port}"):
            with EchoPeer(tmp_path, port):
                pass


def test_rounds_leave_out_the_bring_up_doorbells():
    from hil.netmetrics import RDT, TDT, rounds

    # ring setup (TDT = 0), DISCOVER, REQUEST, ARP: each TDT with its RDT after the answer
    bells = [(0.1, TDT), (1.0, TDT), (1.2, RDT), (2.0, TDT), (2.1, RDT), (3.0, TDT), (3.3, RDT)]
    bells += [(10.0, TDT), (10.05, RDT), (11.0, TDT), (11.0, TDT), (11.2, RDT)]  # an ARP answer
    # the ARP answer during round 2 (11.0) counts as a round of its own: the driver's
    # answers to slirp's ARP requests are rare (none in scenarios/net.yaml's runs)
    assert [round(t, 3) for t in rounds(bells)] == [0.05, 0.2, 0.2]
