"""The parts of the passthrough proof that need no L1 (tests/integration/test_vfio_l1.py
boots it): the `share` device kind (virtio-9p, read-only), the profile key
`iommu_intremap`, the `passthrough` check's matching, and the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil import host, pcicheck
from hil.checks import CHECKS
from hil.checks.passthrough import HostFunction, match
from hil.devices.base import AttachContext
from hil.devices.share import Share, ShareKind
from hil.errors import UserError
from hil.machine import MachineConfig, qemu_argv
from hil.paths import PROFILES, SCENARIOS
from hil.plan import make_plan
from hil.profile import load_profile
from hil.scenario import load_scenario


def _validate(tmp_path, share: str):
    from hil.cli import main

    p = tmp_path / "s.yaml"
    p.write_text(
        "profile: q35-tcg-bios\nimage: {kind: linux}\ndevices:\n"
        f"  - share: {share}\nsteps:\n  - expect: x\n"
    )
    return p, main(["validate", str(p)])


# --- share -----------------------------------------------------------------------------


def test_share_attaches_a_read_only_9p_export(tmp_path):
    ctx = AttachContext(tmp_path, name="share0", bus=",bus=rp3")
    ShareKind().attach(Share(str(tmp_path), "host"), ctx)
    fsdev = ctx.args[ctx.args.index("-fsdev") + 1]
    assert fsdev == (
        f"local,id=share0-fs,path={tmp_path},security_model=none,readonly=on,multidevs=remap"
    )
    assert ctx.args[-1] == "virtio-9p-pci,fsdev=share0-fs,mount_tag=host,bus=rp3"


def test_a_comma_in_the_shared_path_cannot_add_an_option(tmp_path):
    d = tmp_path / "a,readonly=off"
    d.mkdir()
    ctx = AttachContext(tmp_path, name="share0")
    ShareKind().attach(Share(str(d), "t"), ctx)
    fsdev = ctx.args[ctx.args.index("-fsdev") + 1]
    assert "a,,readonly=off" in fsdev and fsdev.endswith(",readonly=on,multidevs=remap")


def test_share_paths_resolve_from_the_scenario(tmp_path):
    (tmp_path / "data").mkdir()
    p, code = _validate(tmp_path, "{path: data, tag: d}")
    assert code == 0
    (spec,) = make_plan(load_scenario(p)).devices
    assert spec == Share(str(tmp_path / "data"), "d")


def test_the_image_cache_share_is_hils_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PXOS_HIL_CACHE", str(tmp_path / "cache"))
    p, code = _validate(tmp_path, "{image_cache: true, tag: cache}")
    assert code == 0
    (spec,) = make_plan(load_scenario(p)).devices
    assert spec.path == str(tmp_path / "cache") and not Path(spec.path).exists()
    ShareKind().attach(spec, AttachContext(tmp_path, name="share0"))
    assert Path(spec.path).is_dir()  # made for QEMU when the run starts, not when planned


@pytest.mark.parametrize(
    "share, words",
    [
        ("{path: nowhere, tag: x}", ["devices[0].share.path", "is not a directory"]),
        ("{path: /, tag: 'a b'}", ["devices[0].share.tag", "31 letters"]),
        ("{path: /, tag: " + "t" * 32 + "}", ["devices[0].share.tag", "31 letters"]),
        ("{tag: x}", ["required key 'path' is missing"]),
        ("{path: /}", ["required key 'tag' is missing"]),
        ("{path: /, image_cache: true, tag: x}", ["either path or image_cache"]),
        ("{path: /, tag: x, readonly: false}", ["readonly"]),
        ('{path: "/tmp\\nx", tag: x}', ["newline"]),
    ],
)
def test_bad_shares_are_invalid_input_naming_the_key(tmp_path, capsys, share, words):
    p, code = _validate(tmp_path, share)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert all(w in err for w in words), err


# --- iommu_intremap --------------------------------------------------------------------


def _cfg(**kw) -> MachineConfig:
    base = dict(name="t", machine="q35", accel="tcg", cpu=None, memory_mib=128, cpus=1,
                acpi=True, boot="bios", disk=Path("/d.img"), kernel=None, initrd=None,
                device_args=("-device", "nvme,serial=X,drive=n0"), iommu=True)  # fmt: skip
    return MachineConfig(**{**base, **kw})


def test_interrupt_remapping_is_asked_for_by_the_l1_profile(monkeypatch):
    monkeypatch.setattr(host, "which", lambda name: "/usr/bin/qemu-system-x86_64")
    p = load_profile(PROFILES / "q35-tcg-l1-iommu.yaml")
    assert p.iommu and p.iommu_intremap and p.to_json()["iommu_intremap"] is True
    argv = qemu_argv(_cfg(iommu_intremap=True), "/p", "/q", Path("/l"))
    assert argv.index("intel-iommu,intremap=on") < argv.index("nvme,serial=X,drive=n0")
    assert "intel-iommu,intremap=off" in qemu_argv(_cfg(), "/p", "/q", Path("/l"))
    assert not load_profile(PROFILES / "q35-tcg-vgpu-iommu.yaml").iommu_intremap


@pytest.mark.parametrize(
    "body, words",
    [
        ("accel: tcg\niommu_intremap: true\n", ["p.yaml:2: iommu_intremap", "iommu: true"]),
        ("accel: kvm\niommu: true\niommu_intremap: true\n", ["kernel-irqchip=split"]),
    ],
)
def test_intremap_without_its_conditions_is_refused(tmp_path, body, words):
    f = tmp_path / "p.yaml"
    f.write_text(body)
    with pytest.raises(UserError) as e:
        load_profile(f)
    assert all(w in str(e.value) for w in words), str(e.value)


# --- the passthrough check -------------------------------------------------------------

NVME = HostFunction(
    "0000:01:00.0", 0x1B36, 0x10, 0x010802, {0: pcicheck.Bar("m64", False, None, 0x4000)}
)
LISTING = [
    "pci 00:00.0 8086:29c0 060000",
    "pci 00:01.0 1b36:0010 010802 bar0=m64:c0000000/4000",
    "pci 00:02.0 8086:100e 020000 bar0=m32:c0020000/20000 bar1=io:c000/40",
]


def test_a_passed_through_function_matches_by_ids_class_and_bars():
    e1000 = HostFunction(
        "0000:02:00.0", 0x8086, 0x100E, 0x020000,
        {0: pcicheck.Bar("m32", False, None, 0x20000), 1: pcicheck.Bar("io", False, None, 0x40)},
    )  # fmt: skip
    found, problems = match(pcicheck.parse_kernel(LISTING), [NVME, e1000])
    assert found == {"0000:01:00.0": "00:01.0", "0000:02:00.0": "00:02.0"} and not problems


def test_a_bar_size_that_differs_from_sysfs_is_named():
    listing = [ln.replace("/4000", "/2000") for ln in LISTING]
    found, (problem,) = match(pcicheck.parse_kernel(listing), [NVME])
    assert not found
    assert "host 0000:01:00.0" in problem and "guest 00:01.0" in problem
    assert "[0=m64/0x2000]" in problem and "[0=m64/0x4000]" in problem


def test_a_function_missing_from_the_listing_is_named():
    _, (problem,) = match(pcicheck.parse_kernel(LISTING[:1]), [NVME])
    assert "no function with these IDs and class" in problem


def test_two_identical_host_functions_need_two_guest_functions():
    _, problems = match(pcicheck.parse_kernel(LISTING), [NVME, NVME])
    assert len(problems) == 1


def test_the_shipped_scenarios_validate():
    assert CHECKS["passthrough"].live
    outer = load_scenario(SCENARIOS / "passthrough-l1.yaml")
    assert [d.kind for d in outer.devices][:3] == ["share"] * 3
    for name in ("passthrough.yaml", "passthrough-nonviable.yaml"):
        s = load_scenario(SCENARIOS / "l1" / name)  # planning needs L1's devices: parse only
        assert all(d.kind == "passthrough" for d in s.devices)


def test_the_inner_gpu_program_assembles(tmp_path):
    """scenarios/l1/passthrough.yaml cannot be planned here (its devices are L1's), so
    its program is assembled through a scenario with the same gpu: section."""
    inner = load_scenario(SCENARIOS / "l1" / "passthrough.yaml")
    assert inner.profile.name == "q35-tcg-vgpu"
    program = SCENARIOS / "programs" / "nvme_identify.pxs"
    probe = tmp_path / "probe.yaml"
    probe.write_text(
        f"name: probe\nprofile: q35-tcg-vgpu\ngpu: {{program: '{program}'}}\n"
        "steps:\n  - expect: x\n"
    )
    assert make_plan(load_scenario(probe)).recipe.payload is not None
