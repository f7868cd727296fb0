"""The profile key `iommu` (docs/profiles.md): parsed, refused on pc, and QEMU's
intel-iommu placed before every PCI device (QEMU 7.2 accepts it later, but devices
created before it keep untranslated DMA, silently)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil import host
from hil.errors import UserError
from hil.machine import MachineConfig, qemu_argv
from hil.paths import PROFILES
from hil.profile import load_profile


def test_the_iommu_profile_asks_for_it():
    p = load_profile(PROFILES / "q35-tcg-vgpu-iommu.yaml")
    assert p.iommu and p.machine == "q35" and p.to_json()["iommu"] is True
    assert not load_profile(PROFILES / "q35-tcg-vgpu.yaml").iommu


def test_iommu_on_pc_is_refused_with_the_key_named(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("machine: pc\niommu: true\n")
    with pytest.raises(UserError) as e:
        load_profile(f)
    assert "iommu" in str(e.value) and "q35" in str(e.value) and "p.yaml:2: iommu:" in str(e.value)


def test_intel_iommu_comes_before_the_devices(monkeypatch):
    monkeypatch.setattr(host, "which", lambda name: "/usr/bin/qemu-system-x86_64")
    cfg = MachineConfig(
        name="t",
        machine="q35",
        accel="tcg",
        cpu=None,
        memory_mib=128,
        cpus=1,
        acpi=False,
        boot="bios",
        disk=Path("/d.img"),
        kernel=None,
        initrd=None,
        device_args=("-device", "nvme,serial=X,drive=n0"),
        iommu=True,
    )
    argv = qemu_argv(cfg, "/dev/pts/9", "/tmp/q.sock", Path("/tmp/qemu.log"))
    i = argv.index("intel-iommu,intremap=off")
    assert argv[i - 1] == "-device" and i < argv.index("nvme,serial=X,drive=n0")
    assert "intel-iommu,intremap=off" not in qemu_argv(
        MachineConfig(**{**cfg.__dict__, "iommu": False}), "/p", "/q", Path("/l")
    )


def test_a_passing_verdict_names_the_blocked_dma():
    from hil.devices.base import Finding
    from hil.judge import judge
    from hil.verdict import Verdict

    note = Finding("vgpu", "info", "the IOMMU blocked 1 device DMA: !DMAR dev=00:01.0")
    v = judge(Verdict("pass", "all 3 steps passed"), [note], [])
    assert v.outcome == "pass"
    assert v.reason == "all 3 steps passed; the IOMMU blocked 1 device DMA: !DMAR dev=00:01.0"
    assert judge(Verdict("pass", "all 3 steps passed"), [], []).reason == "all 3 steps passed"
