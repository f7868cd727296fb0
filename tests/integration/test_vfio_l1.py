"""Passthrough proven on a real kernel (docs/passthrough.md, "Proof on a real kernel").

hil runs scenarios/passthrough-l1.yaml: an L1 Linux under TCG with QEMU's intel-iommu and
emulated devices, the host's filesystem, this checkout and the image cache shared
read-only over virtio-9p. Inside L1, hil itself (this checkout's .venv) passes
scenarios/l1/passthrough.yaml on Linux's real vfio-pci (L2: pxOS), is SIGKILLed mid-bind
and `hil vfio restore` gives the devices back, and a non-viable group is refused. The
outer scenario's steps check L1's lines; this test checks them again, independently of
hil's own checks: L2's PCI listing against L1's sysfs (IDs, class, BAR kind and size),
the drivers before and after, the restore naming the killed pid.
"""

from __future__ import annotations

import re
import time

import pytest

from hil import pcicheck
from hil.image import ImageRecipe, build
from hil.plan import make_plan
from hil.scenario import load_scenario
from hil.vfio.host import parse_resource

from .conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.l1]

SCENARIO = REPO / "scenarios" / "passthrough-l1.yaml"
PROGRAM = REPO / "scenarios" / "programs" / "nvme_identify.pxs"
DEVICES = {
    "0000:01:00.0": "nvme",
    "0000:02:00.0": "e1000",
    "0000:03:00.0": "bochs-drm",
    "0000:00:07.0": "nvme",  # cmb_mb: 4096, BAR2 above 4 GiB
}
HOST_DRIVERS = "nvme=nvme e1000=e1000 vga=bochs-drm bochs=bochs-drm cmb=nvme"
CMB = "0000:00:07.0"
GiB = 1 << 30


def _console(run_dir) -> list[str]:
    """serial.log's lines without their timestamps."""
    text = (run_dir / "serial.log").read_text(errors="replace")
    return [re.sub(r"^\s*[0-9.]+ ", "", ln) for ln in text.splitlines()]


def _l1_sysfs(lines: list[str]) -> dict:
    """bdf -> (vendor, device, class, {index: Bar}) from the init's @l1 sysfs/resource lines."""
    out, res = {}, {}
    for ln in lines:
        if m := re.match(r"^@l1 sysfs (\S+) (0x\w+) (0x\w+) (0x\w+)$", ln):
            out[m[1]] = tuple(int(v, 16) for v in m.groups()[1:])
        elif m := re.match(r"^@l1 resource (\S+) (.*)$", ln):
            res.setdefault(m[1], []).append(m[2])
    return {bdf: (*ids, parse_resource("\n".join(res[bdf]))) for bdf, ids in out.items()}


def _l2_line(lines: list[str], part: str) -> str:
    return next((ln for ln in lines if ln.startswith("@l2 pci ") and part in ln), "nothing")


def _prebuild(image_cache, tmp_path) -> None:
    """The pxOS images the inner scenarios boot, built here so that L1 finds them in the
    shared cache (else hil builds them inside L1, under TCG). passthrough.yaml's cannot
    be planned on this host (its devices are L1's): a scenario with the same program and
    profile has the same recipe."""
    build(ImageRecipe(), cache_root=image_cache)  # passthrough-nonviable.yaml's
    probe = tmp_path / "probe.yaml"
    probe.write_text(
        f"name: probe\nprofile: q35-tcg-vgpu\ngpu: {{program: '{PROGRAM}'}}\n"
        "steps:\n  - expect: x\n"
    )
    build(make_plan(load_scenario(probe)).recipe, cache_root=image_cache)


def test_passthrough_on_l1_linux(hil, image_cache, tmp_path, record_property):
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("L1 runs hil from the checkout's .venv (bin/hil doctor makes it)")
    _prebuild(image_cache, tmp_path)
    t0 = time.monotonic()
    r = hil("run", "--retries", "0", "--no-history", str(SCENARIO), timeout=900)
    wall = time.monotonic() - t0
    record_property("l1_wall_s", round(wall, 1))
    print(f"passthrough-l1: {wall:.1f} s")
    assert r.code == 0, r.out[-3000:] + r.err[-2000:]
    lines = _console(r.run_dirs[0])

    # The shares are read-only on the host's side: a read-write mount cannot write.
    assert any(re.match(r"^@l1 host write refused: .*Read-only file system", ln) for ln in lines), [
        ln for ln in lines if "host write" in ln
    ]

    # The drivers, from L1's sysfs: the host's before, after the run, after the
    # restore that followed the SIGKILL, and at the end.
    for when in ("before", "after", "restored", "end"):
        assert f"@l1 {when} {HOST_DRIVERS}" in lines, when
    assert any(re.match(r"^@l1 bound nvme=vfio-pci ", ln) for ln in lines)

    # L2's listing has each passed-through function as L1's sysfs reports it.
    l2 = pcicheck.parse_kernel([ln.removeprefix("@l2 ") for ln in lines if ln.startswith("@l2 ")])
    host = _l1_sysfs(lines)
    assert set(host) == set(DEVICES)
    # The second NVMe's BAR2 (its 4 GiB memory buffer): L1's SeaBIOS placed it far above
    # 4 GiB, and L2's listing (checked below) has it with the same 64-bit size.
    bar2 = next(b for b in host[CMB][3] if b.index == 2)
    assert bar2.start >= 4 * GiB and bar2.size == 4 * GiB, bar2
    assert bar2.is_64bit and bar2.prefetchable, bar2
    taken = set()
    for bdf, (vendor, device, cls, bars) in host.items():
        same = [
            f
            for f in l2.values()
            if (f.vendor, f.device) == (vendor, device)
            and f.bdf not in taken
            and (vendor != 0x1B36 or (bdf == CMB) == (2 in f.bars))  # NVMes: by their BAR2
        ]
        assert len(same) == 1, (bdf, l2)
        guest = same[0]
        taken.add(guest.bdf)
        assert guest.class_code == cls >> 8, bdf
        want = {
            b.index: ("io" if b.is_io else "m64" if b.is_64bit else "m32", b.prefetchable, b.size)
            for b in bars
            if b.index < 6
        }
        got = {n: (b.kind, b.prefetch, b.size) for n, b in guest.bars.items()}
        assert got == want, (bdf, got, want)
    print(f"L1 {CMB} BAR2 at {bar2.start:#x}; L2 lists it as", _l2_line(lines, "bar2=m64p:"))

    # The pixel NVMe driver (on the vGPU in L1) identified the passed-through controller
    # and read from it: its DMA went through L1's IOMMU into the vGPU's memory.
    for want in ("@l2 nvme model QEMU NVMe Ctrl", "@l2 nvme serial PXL1NVME"):
        assert want in lines, want
    assert any(re.match(r"^@l2 identify test read lba 0-7 status 0+$", ln) for ln in lines)

    # SIGKILL of the hil that held the NVMe; `hil vfio restore` names that pid.
    killed = next(re.match(r"^@l1 killed pid=(\d+) ", ln) for ln in lines if "@l1 killed" in ln)
    pid = killed[1]
    assert f"hil: 0000:01:00.0 back on nvme (left by hil pid {pid}, no longer running)" in lines

    # The non-viable group: refused (exit 3), naming the foreign member; nothing changed.
    refusal = [ln for ln in lines if "passthrough 0000:04:01.0: its IOMMU group" in ln]
    assert refusal and "also holds 0000:04:02.0" in refusal[0], lines[-40:]
    assert "Nothing on the host was changed" in refusal[0]
    assert "@l1 nonviable rc=3" in lines
