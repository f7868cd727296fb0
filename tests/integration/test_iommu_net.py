"""DMA confinement with the e1000 (issue 15, microkernel/iommu.c), under TCG.

A hostile pixel e1000 driver (pxi/programs/net/dmatest.pxs) gets a DHCP offer through
VRAM, then points the NIC at memory no device may touch -- the kernel's image, its page
tables, guest RAM outside the DMA window -- as a TX buffer (the NIC reads it: the bytes
would go to the wire) or as RX buffers (the NIC writes slirp's next answer there).  Each
attack is its own boot: the kernel stops the NIC that faulted, and the program's last
honest frame proves it (never sent, never written back).  The control runs the TX
attack without the IOMMU: the kernel's bytes leave on the wire."""

from __future__ import annotations

import re

import dpkt
import pytest

from hil import image

from .conftest import REPO, Hil
from .test_iommu import NO_EVENT_MS, OUTSIDE, WAIT_MS, pgtables

DMATEST = REPO / "pxi" / "programs" / "net" / "dmatest.pxs"
TX, RX = 0, 1
ATTACK_LEN = 60  # dmatest.pxs: the TX attack's frame


def scenario(hil: Hil, target: int, mode: int, profile: str, wait_ms: int) -> object:
    return hil.scenario(
        f"""\
profile: {profile}
timeout: 150
devices:
  - nic: {{model: e1000}}
gpu:
  program: {DMATEST}
  defines: {{TARGET: {target:#x}, MODE: {mode}, DMAR_WAIT_MS: {wait_ms}}}
steps:
  - expect: '@gpu start'
    timeout: 30
  - send: stats
  - expect: {{regex: '^stats busy=.* sum=(?P<before>[0-9a-f]+)$'}}
    record: {{before: hex}}
  - expect: 'dmatest honest dhcp offer 10.0.2.15'
    timeout: 90
  - expect: 'dmatest mode {mode:02x} at {target:08x}'
    timeout: 30
  - expect: {{regex: '^dmatest dmar event (?P<event>\\S+)$'}}
    timeout: 30
  - expect: {{regex: '^dmatest attack descriptor status (?P<attack_status>[0-9a-f]{{2}}) '}}
    timeout: 30
    record: {{attack_status: hex}}
  - expect: {{regex: '^dmatest after the stop tx status (?P<after_status>[0-9a-f]{{2}})$'}}
    timeout: 60
    record: {{after_status: hex}}
  - expect: {{regex: '^@gpu end state=3 '}}
    timeout: 30
  - send: stats
  - expect: {{regex: '^stats busy=.* sum=(?P<after>[0-9a-f]+)$'}}
    record: {{after: hex}}
  - send: shutdown
  - exit: shutdown
"""
    )


def run(hil: Hil, target: int, mode: int, profile: str, wait_ms: int = WAIT_MS):
    r = hil("run", str(scenario(hil, target, mode, profile, wait_ms)), timeout=240)
    assert r.run_dirs, r.out + r.err
    return r, (r.run_dirs[0] / "serial.log").read_text()


def frames(r) -> list[bytes]:
    """Every frame the NIC put on the wire (QEMU's filter-dump of the netdev)."""
    with open(r.run_dirs[0] / "nic0.pcap", "rb") as f:
        return [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]


def discovers(fs: list[bytes]) -> int:
    """DHCPDISCOVERs from the guest: UDP 68 -> 67, message type option 1."""
    n = 0
    for buf in fs:
        try:
            eth = dpkt.ethernet.Ethernet(buf)
        except dpkt.UnpackError:
            continue  # the control's attack frame: the kernel's bytes
        udp = getattr(eth.data, "data", None)
        if isinstance(udp, dpkt.udp.UDP) and (udp.sport, udp.dport) == (68, 67):
            n += bytes([53, 1, 1]) in bytes(udp.data)[240:]
    return n


@pytest.mark.integration
@pytest.mark.parametrize("mode", [TX, RX], ids=["tx-read", "rx-write"])
@pytest.mark.parametrize("what", ["image", "pgtables", "outside"])
def test_nic_dma_outside_vram_and_window_is_blocked(hil, image_cache, what, mode):
    target = {"image": 0x100000, "pgtables": pgtables(image_cache), "outside": OUTSIDE}[what]
    r, serial = run(hil, target, mode, "q35-tcg-vgpu-iommu")
    assert r.code == 0, r.out + r.err
    # TX: the NIC read the target (a frame's bytes); RX: it wrote slirp's answer there
    kind = "read" if mode == TX else "write"
    dmar = re.findall(r"^\s*[\d.]+ (!DMAR .*)$", serial, re.M)
    assert len(dmar) == 1, serial
    page = target & ~0xFFF
    assert re.fullmatch(rf"!DMAR dev=00:01\.0 addr={page:x} reason=[0-9a-f]{{2}} {kind}", dmar[0])
    assert "dmatest dmar event 00000008" in serial  # the GPU learnt it: bdf 00:01.0
    m = r.run["metrics"]
    assert m["gpu.dma_blocked"] == 1
    assert m["before"] == m["after"], "the kernel's memory changed"
    assert "the IOMMU blocked 1 device DMA: !DMAR dev=00:01.0" in r.run["verdict"]["reason"]
    # QEMU's e1000 finished the faulting descriptor and wrote it back into VRAM (mapped)
    assert m["attack_status"] & 1
    # stopped: the last honest frame was neither written back nor sent
    assert m["after_status"] == 0
    fs = frames(r)
    assert discovers(fs) == 1 + (mode == RX), [f[:48].hex() for f in fs]
    if mode == TX:  # what the bus gave the NIC for the kernel's bytes: zeros
        assert bytes(ATTACK_LEN) in fs, [f[:16].hex() for f in fs]


@pytest.mark.integration
def test_control_without_the_iommu_the_nic_sends_the_kernel(hil, image_cache):
    """The TX attack without the IOMMU: no fault, no stop, and the NIC puts the kernel's
    first bytes on the wire (what issue 15 closes); its next honest frame goes out."""
    r, serial = run(hil, 0x100000, TX, "q35-tcg-vgpu", wait_ms=NO_EVENT_MS)
    assert "!DMAR" not in serial and "iommu ver=" not in serial
    assert "dmatest dmar event none" in serial
    m = r.run["metrics"]
    assert m["gpu.dma_blocked"] == 0 and m["after_status"] & 1
    kernel = image.build(image.ImageRecipe(), cache_root=image_cache).flat.read_bytes()
    fs = frames(r)
    assert kernel[:ATTACK_LEN] in fs, [f[:16].hex() for f in fs]
    assert discovers(fs) == 2
