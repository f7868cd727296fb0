"""The pixel e1000 driver (pxi/programs/net/echotest.pxs) on QEMU's e1000 and user
network, under TCG: judged by its serial lines, by the capture QEMU writes (the pcap
check kind, dpkt), by the host's UDP echo peer, and by the reference replay."""

from __future__ import annotations

import json
import re
import socket

import pytest

from .conftest import REPO, Hil, assert_no_leftovers

ECHOTEST = REPO / "pxi" / "programs" / "net" / "echotest.pxs"
COUNT = 32


def free_port() -> int:
    """A UDP port nobody holds now (the peer must bind it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenario(hil: Hil, port: int, defines: str, steps: str, checks: str, reference: str = "none"):
    return hil.scenario(
        f"""\
profile: q35-tcg-vgpu-iommu
timeout: 240
devices:
  - nic: {{model: e1000, udp_echo: {{port: {port}}}}}
gpu:
  program: {ECHOTEST}
  defines: {{PEER_PORT: {port}, COUNT: {COUNT}, {defines}}}
  reference: {reference}
steps:
  - expect: '@gpu start'
    timeout: 30
  - lines:
      - 'e1000: mac 52:54:00:12:34:56'
      - 'dhcp: offer 10.0.2.15 from 10.0.2.2'
      - {{regex: '^dhcp: lease 10\\.0\\.2\\.15 mask 255\\.255\\.255\\.0 router 10\\.0\\.2\\.2 '}}
      - 'arp: 10.0.2.2 is at 52:55:0a:00:02:02'
    timeout: 90
{steps}  - expect: {{regex: '^@gpu end state=3 '}}
    timeout: 60
  - send: shutdown
  - exit: shutdown
checks:
  - pcap:
      device: nic0
{checks}""",
    )


def serial(r) -> str:
    return (r.run_dirs[0] / "serial.log").read_text()


@pytest.fixture(scope="module")
def happy(tmp_path_factory, image_cache):
    hil = Hil(tmp_path_factory.mktemp("net"), image_cache)
    port = free_port()
    sc = scenario(
        hil,
        port,
        "WORKERS: 4, PER: 2, SIZE_MIN: 18, SIZE_MAX: 1472",
        "  - expect: 'net done errors '\n    timeout: 120\n",
        f"      arp_reply_from: '52:55:0a:00:02:02'\n"
        f"      udp_echo: {{port: {port}, count: {COUNT}}}\n"
        "      checksums: true\n",
        reference="wgpu",
    )
    r = hil("run", str(sc), timeout=400)
    yield hil, r, port
    assert_no_leftovers(hil)


def test_echo_passes_with_pcap_and_reference_replay(happy):
    _, r, port = happy
    assert r.code == 0, r.out + r.err
    s = serial(r)
    assert f"udp: sent {COUNT:08x} echoed ok {COUNT:08x} bad 00000000 lost 00000000" in s, s
    assert "net done errors 00000000" in s
    assert re.search(
        r"net: drops rx_short 0+ rx_long 0+ rx_csum 0+ rx_err 0+ rx_late 0+ "
        r"rx_dup 0+ rx_other [0-9a-f]+ rx_ring_full 0+ tx_too_long 0+ "
        r"tx_not_done 0+\n",
        s,
        re.M,
    ), s
    checks = {c["name"]: c for c in r.run["checks"]}
    assert checks["pcap"]["outcome"] == "pass", checks
    assert (
        f"{COUNT} UDP datagrams to port {port} and {COUNT} back in order"
        in checks["pcap"]["reason"]
    )
    assert [x["divergence"] for x in r.run["gpu"]["reference"]] == [None, None]
    assert r.run["metrics"]["peer.datagrams"] == COUNT
    # under the guest IOMMU (issue 15): none of the NIC's DMA blocked
    assert "iommu ver=10 " in s and r.run["metrics"]["gpu.dma_blocked"] == 0
    b = json.loads((r.run_dirs[0] / "bridge.json").read_text())
    # the NIC's DMA (the echoes, up to 1472 bytes each) reached VRAM as external writes
    assert b["external_write_bytes"] > COUNT * 400


def test_the_mac_and_rings_are_reported(happy):
    _, r, _ = happy
    s = serial(r)
    assert re.search(r"e1000: controller 100e8086 bdf \w{8} bar0 \w{8} polling \(no msi-x\)", s)
    assert re.search(r"e1000: link up \(status [0-9a-f]{8}\)", s)
    assert "e1000: rings in vram: tx 00000020 rx 00000020 descriptors" in s


def sizes(count: int, lo: int, hi: int, step: int = 181) -> list[int]:
    """echotest.pxs's payload size of datagram seq (w_size)."""
    return [lo + (seq * step) % (hi - lo + 1) for seq in range(count)]


def test_overrun_and_oversize_are_counted_and_a_pcap_assertion_quotes_the_frame(hil):
    """An RX ring of 8 descriptors (7 usable) for 16 datagrams in flight: the ring fills,
    echoes that do not fit are lost for their round and arrive late in the next one; the
    driver counts them and goes on.  Sizes up to 1600 bytes: those above the MTU are
    refused (tx_too_long).  The capture holds every datagram that went out, so a pcap
    assertion expecting one more fails, quoting the frames."""
    port = free_port()
    too_long = sum(1 for n in sizes(COUNT, 18, 1600) if n > 1472)
    sent = COUNT - too_long
    sc = scenario(
        hil,
        port,
        "WORKERS: 4, PER: 4, RXN: 8, ROUND_POLLS: 200, SIZE_MIN: 18, SIZE_MAX: 1600",
        "  - expect: {regex: '^udp: sent (?P<sent>[0-9a-f]{8}) echoed ok (?P<ok>[0-9a-f]{8}) "
        "bad 00000000 lost (?P<lost>[0-9a-f]{8})$'}\n    timeout: 150\n"
        "    record: {sent: hex, ok: hex, lost: hex}\n"
        "  - expect: {regex: '^net: drops .* rx_late (?P<late>[0-9a-f]{8}) .* rx_ring_full "
        "(?P<full>[0-9a-f]{8}) tx_too_long (?P<toolong>[0-9a-f]{8}) tx_not_done 00000000$'}\n"
        "    record: {late: hex, full: hex, toolong: hex}\n",
        f"      udp_echo: {{port: {port}, count: {sent + 1}}}\n",
    )
    r = hil("run", str(sc), timeout=300)
    assert r.code == 1, r.out + r.err
    m = r.run["metrics"]
    assert m["sent"] == sent and m["toolong"] == too_long, m
    assert m["lost"] > 0 and m["ok"] + m["lost"] == sent, m
    assert m["full"] > 0 and m["late"] > 0, m
    # and the NIC itself saw frames it had no descriptor for
    assert re.search(r"e1000: device rnbc 0*[1-9a-f][0-9a-f]* mpc ", serial(r)), serial(r)
    steps = r.run["steps"]
    assert all(s["status"] == "passed" for s in steps), steps  # only the pcap check failed
    pcap = next(c for c in r.run["checks"] if c["name"] == "pcap")
    assert pcap["outcome"] == "fail"
    assert f"{sent} UDP datagrams to port {port}, the scenario expects {sent + 1}" in pcap["reason"]
    assert re.search(
        rf"frame \d+ at \d+\.\d{{3}} s \(\d+ bytes\): UDP 10\.0\.2\.15:40000 -> "
        rf"10\.0\.2\.2:{port} \d+ bytes; ([0-9a-f]{{2}} ){{20}}",
        json.dumps(r.run),
    ), pcap


def test_a_taken_peer_port_is_an_infrastructure_error(hil):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        sc = scenario(
            hil, port, "WORKERS: 1, PER: 1", "", f"      udp_echo: {{port: {port}, count: 1}}\n"
        )
        r = hil("run", str(sc), timeout=120)
    assert r.code == 3, r.out + r.err
    assert f"cannot listen on 127.0.0.1:{port}" in r.out + r.err, r.out + r.err
    assert "Traceback" not in r.out + r.err
