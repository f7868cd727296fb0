"""DMA confinement with the guest IOMMU (issue 15, microkernel/iommu.c), under TCG.

A hostile pixel NVMe driver (pxi/programs/nvme/dmatest.pxs) does one honest 4 KiB read
into VRAM, then points the controller at memory no device may touch: the kernel's
image, its page tables, guest RAM outside the DMA window.  Each attack is its own boot:
the kernel stops a device that faulted (bus mastering off), so a second attempt could
not reach the IOMMU at all -- the program proves it: after the DMAR event it reads 4 KiB
into a marked buffer, and the mark stays.  The control runs the same program without
the IOMMU (the read after the attack lands)."""

from __future__ import annotations

import re

import pytest

from hil import image

from .conftest import REPO, Hil
from .test_broker import dma_model

DMATEST = REPO / "pxi" / "programs" / "nvme" / "dmatest.pxs"
READ, WRITE = 2, 1  # NVMe opcodes: Read makes the controller write memory, Write read it
OUTSIDE = 0x4000000  # 64 MiB: guest RAM, outside the DMA window (32-48 MiB) and VRAM
VRAM = (0xC1000000, 0xC2000000)  # BAR2 of the 16 MiB vGPU, as pci.c places it (checked)
BUF = 0x10000  # dmatest.pxs: the honest read's buffer, a data (heap) address
# The stopped controller cannot post the attack's completion into VRAM and gives up,
# nor fetch the command after it (CID 2: IOSQ 0x6000 + 2 * 64 in the heap at 0xc1800000).
SQE2_FETCH = "pci_nvme_err_addr_read addr 0xc1806080"
STOPPED = (
    "pci_nvme_err_addr_write addr 0xc1805010",
    "pci_nvme_err_cfs controller fatal status",
    SQE2_FETCH,
)

# How long the program waits for the kernel's DMAR event: generous under the IOMMU (the
# wait ends at the event); the control, where none can come, waits less.
WAIT_MS, NO_EVENT_MS = 10000, 3000


def scenario(hil: Hil, target: int, opcode: int, profile: str, wait_ms: int) -> object:
    allowed = "".join(f"        - '{ln}'\n" for ln in STOPPED)
    return hil.scenario(
        f"""\
profile: {profile}
timeout: 120
devices:
  - nvme:
      size: 1M
      fill: {{random: 7}}
      serial: PXNVME0
      errors_allowed:
{allowed}gpu:
  program: {DMATEST}
  defines: {{TARGET: {target:#x}, OPCODE: {opcode}, DMAR_WAIT_MS: {wait_ms}}}
steps:
  - expect: '@gpu start'
    timeout: 30
  - send: stats
  - expect: {{regex: '^stats busy=.* sum=(?P<before>[0-9a-f]+)$'}}
    record: {{before: hex}}
  - expect: 'dmatest honest read status 00000000'
    timeout: 60
  - expect: 'dmatest opcode {opcode:02x} at {target:08x}'
    timeout: 30
  - expect: {{regex: '^dmatest dmar event (?P<event>\\S+)$'}}
    timeout: 30
  - expect: {{regex: '^dmatest after the stop read (?P<after>none|done)$'}}
    timeout: 30
  - expect: {{regex: '^@gpu end state=3 '}}
    timeout: 30
  - send: stats
  - expect: {{regex: '^stats busy=.* sum=(?P<after>[0-9a-f]+)$'}}
    record: {{after: hex}}
  - send: shutdown
  - exit: shutdown
"""
    )


def pgtables(cache) -> int:
    """Where the kernel's own page tables are (PVH path), from the ELF symbol."""
    return image._symbol(image.build(image.ImageRecipe(), cache_root=cache).elf, "__pgtables")


def run(hil: Hil, target: int, opcode: int, profile: str, wait_ms: int = WAIT_MS):
    r = hil("run", str(scenario(hil, target, opcode, profile, wait_ms)), timeout=200)
    serial = (r.run_dirs[0] / "serial.log").read_text()
    return r, serial


@pytest.mark.integration
@pytest.mark.parametrize(
    "what, opcode",
    [("image", READ), ("pgtables", WRITE), ("outside", READ)],
)
def test_device_dma_outside_vram_and_window_is_blocked(hil, image_cache, what, opcode):
    target = {"image": 0x100000, "pgtables": pgtables(image_cache), "outside": OUTSIDE}[what]
    r, serial = run(hil, target, opcode, "q35-tcg-vgpu-iommu")
    assert r.code == 0, r.out + r.err
    assert "bar2=m64p:c1000000/1000000" in serial  # VRAM where the model has it
    heap = VRAM[0] + (VRAM[1] - VRAM[0]) // 2
    assert dma_model(heap + BUF, 4096, VRAM) and not dma_model(target, 4096, VRAM)
    # the controller wrote (Read) or read (Write) memory: the fault says which
    kind = "write" if opcode == READ else "read"
    page = target & ~0xFFF
    dmar = re.findall(r"^\s*[\d.]+ (!DMAR .*)$", serial, re.M)
    assert len(dmar) == 1, serial
    assert re.fullmatch(rf"!DMAR dev=00:01\.0 addr={page:x} reason=[0-9a-f]{{2}} {kind}", dmar[0])
    m = r.run["metrics"]
    assert m["gpu.dma_blocked"] == 1
    assert m["before"] == m["after"], "the kernel's memory changed"
    assert "the IOMMU blocked 1 device DMA: !DMAR dev=00:01.0" in r.run["verdict"]["reason"]
    # stopped (bus mastering off) before the event: the next read neither fetched nor landed
    assert "dmatest dmar event 00000008" in serial
    assert "dmatest after the stop read none" in serial
    assert SQE2_FETCH in (r.run_dirs[0] / "qemu.log").read_text()


@pytest.mark.integration
def test_control_without_the_iommu_nothing_is_blocked(hil):
    """The same attack on RAM outside the window, without the IOMMU: no fault, no stop
    (the attack is not even noticed -- what issue 15 closes)."""
    r, serial = run(hil, OUTSIDE, READ, "q35-tcg-vgpu", wait_ms=NO_EVENT_MS)
    assert "!DMAR" not in serial and "iommu ver=" not in serial
    assert r.run["metrics"]["gpu.dma_blocked"] == 0
    # nothing stopped the controller: the read after the attack lands
    assert "dmatest dmar event none" in serial and "dmatest after the stop read done" in serial
