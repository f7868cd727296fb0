"""hil/vfio against a fake sysfs tree whose kernel acts on writes (tests/vfio_fakes.py).

Covers the bind dance, restore (after the run, an exception, Ctrl-C, a SIGKILL of a
real child process), writes that fail half-way, devices that disappear, the
preflight refusals, state files and pid reuse; and, read-only, this machine's real
/sys through doctor_report.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.errors import EXIT_INFRA, EXIT_INVALID, InfraError, UserError
from hil.vfio import (
    Bdf,
    BindError,
    DeviceBusy,
    Owner,
    Passthrough,
    PciHost,
    Processes,
    Record,
    Registry,
    RestoreError,
    StateError,
    Sysfs,
    doctor_report,
    parse_bdf,
    parse_resource,
    qemu_args,
    restore_stale,
)
from hil.vfio.bdf import bdfs_in_path
from hil.vfio.passthrough import signals_deferred
from tests.vfio_fakes import FakeHost, FakeKernel

REPO = Path(__file__).resolve().parent.parent
NVME = Bdf.parse("0000:01:00.0")
GPU, GPU_AUDIO = Bdf.parse("0000:02:00.0"), Bdf.parse("0000:02:00.1")
NIC = Bdf.parse("0000:03:00.0")
ROOT_DISK = Bdf.parse("0000:04:00.0")
NO_RESET = Bdf.parse("0000:05:00.0")
PORT = Bdf.parse("0000:00:1c.0")
BEHIND_PORT = Bdf.parse("0000:06:00.0")


def no_commands(argv: object) -> tuple[int, str]:
    raise AssertionError(f"no command may run here: {argv}")


@pytest.fixture
def fake(tmp_path) -> FakeHost:
    """An Intel host with an IOMMU and vfio-pci loaded, and a few devices."""
    h = FakeHost(tmp_path / "host")
    h.add_iommu()
    h.load_vfio()
    h.add_driver("nvme", ("144d:a808", "144d:a809", "1b36:0010"))
    h.add_driver("nouveau", ("10de:1b80",))
    h.add_driver("snd_hda_intel", ("10de:10f0",))
    h.add_driver("e1000e", ("8086:10d3",))
    h.add_driver("pcieport")
    h.add_device("0000:01:00.0", "144d:a808", 0x010802, driver="nvme", group=5)
    h.add_device("0000:02:00.0", "10de:1b80", 0x030000, driver="nouveau", group=6)
    h.add_device("0000:02:00.1", "10de:10f0", 0x040300, driver="snd_hda_intel", group=6)
    h.add_device("0000:03:00.0", "8086:10d3", 0x020000, driver="e1000e", group=7)
    h.add_device("0000:04:00.0", "144d:a809", 0x010802, driver="nvme", group=8)
    h.add_device("0000:05:00.0", "1b36:0010", 0x010802, driver="nvme", group=9, reset=None)
    port = h.add_device("0000:00:1c.0", "8086:a110", 0x060400, driver="pcieport", group=10)
    h.add_device("0000:06:00.0", "144d:a808", 0x010802, driver="nvme", group=10, parent=port)
    h.set_root_disk("0000:04:00.0")
    h.set_default_route("0000:03:00.0", "enp3s0")
    return h


@pytest.fixture
def kernel(fake) -> FakeKernel:
    return FakeKernel(fake.root)


@pytest.fixture
def dirs(tmp_path) -> dict:
    return {"run_dir": tmp_path / "run", "registry": tmp_path / "registry"}


def passthrough(kernel, dirs, bdfs, **kw) -> Passthrough:
    kw.setdefault("runner", no_commands)
    return Passthrough(bdfs, sysfs=kernel, **dirs, **kw)


def driver_of(kernel, bdf) -> str | None:
    return PciHost(kernel).driver(bdf)


def override_of(kernel, bdf) -> str | None:
    return PciHost(kernel).override(bdf)


def registry_files(dirs) -> list[str]:
    return sorted(p.name for p in Registry(dirs["registry"]).entries())


def run_by_hand(kernel: FakeKernel, message: str) -> None:
    """Carry out the `echo X > /path; rm FILE` commands a RestoreError prints."""
    commands = message.split("By hand, as root: ")[1].split(" (or `hil vfio restore`")[0]
    for cmd in commands.split("; "):
        if cmd.startswith("rm "):
            os.unlink(cmd[3:])
            continue
        m = re.fullmatch(r"echo ?(\S*) > /(\S+)", cmd)
        assert m, cmd
        kernel.write(m[2], m[1] + "\n")


# --- addresses and QEMU arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("0000:01:00.0", "0000:01:00.0"),
        ("01:00.0", "0000:01:00.0"),
        ("0000:AF:1f.7", "0000:af:1f.7"),
        ("10000:e1:00.0", "10000:e1:00.0"),  # a VMD domain
        (" 0000:01:00.0 ", "0000:01:00.0"),
    ],
)
def test_bdf_accepts_and_canonicalises(text, canonical):
    assert str(parse_bdf(text, "p.yaml:3: passthrough[0].host")) == canonical


@pytest.mark.parametrize(
    "bad",
    ["", "01:00", "0000:01:20.0", "0000:01:00.8", "000:01:00.0", "0000:01:00.0,x-foo=1",
     "0000:1:00.0", "0000:01:00.0\n-device foo", 1234, None],
)  # fmt: skip
def test_bdf_rejects_malformed_with_a_user_error(bad):
    with pytest.raises(UserError) as e:
        parse_bdf(bad, "p.yaml:3: passthrough[0].host")
    assert e.value.exit_code == EXIT_INVALID
    msg = str(e.value)
    assert msg.startswith("p.yaml:3: passthrough[0].host: ")
    assert "0000:01:00.0" in msg and "lspci -D" in msg


def test_bdfs_in_path_finds_every_function_on_the_way():
    path = "sys/devices/pci0000:00/0000:00:1c.0/0000:06:00.0/nvme/nvme0/nvme0n1"
    assert bdfs_in_path(path) == [PORT, BEHIND_PORT]
    assert bdfs_in_path("sys/devices/virtual/net/lo") == []


def test_qemu_args_are_built_from_validated_values_only():
    assert qemu_args(NVME) == ["-device", "vfio-pci,host=0000:01:00.0"]
    assert qemu_args(NVME, rom=False, dev_id="pt0", bus="rp1") == [
        "-device",
        "vfio-pci,host=0000:01:00.0,id=pt0,bus=rp1,rombar=0",
    ]
    with pytest.raises(ValueError):
        qemu_args(NVME, dev_id="pt0,x-evil=1")
    with pytest.raises(TypeError):
        qemu_args("0000:01:00.0,x-evil=1")  # type: ignore[arg-type]


def test_resource_file_gives_bars_far_above_4g_and_the_rom():
    zero = "0x0000000000000000 0x0000000000000000 0x0000000000000000"
    text = "\n".join(
        ["0x0000004000000000 0x000000400007ffff 0x0000000000140204", zero,  # 64-bit, 512K
         "0x000000000000c000 0x000000000000c03f 0x0000000000040101", zero, zero, zero,  # I/O
         "0x00000000fe800000 0x00000000fe83ffff 0x0000000000046200",  # ROM, 256K
         "0x00000000fd000000 0x00000000fdffffff 0x0000000000000200"]  # a bridge window: not a BAR
    )  # fmt: skip
    bars = parse_resource(text)
    assert [(b.index, b.start, b.size) for b in bars] == [
        (0, 0x40_0000_0000, 512 << 10),
        (2, 0xC000, 64),
        (6, 0xFE80_0000, 256 << 10),
    ]
    assert bars[0].is_64bit and not bars[0].is_io and bars[1].is_io and not bars[1].is_64bit
    for bad in ("0x10 0x0f 0x200", "0x10 0x1f", "zz 0x1f 0x200"):
        with pytest.raises(ValueError, match="resource line 0"):
            parse_resource(bad)


def test_bars_of_a_fake_device(kernel):
    [bar] = PciHost(kernel).bars(NVME)
    assert (bar.index, bar.start, bar.size, bar.is_64bit) == (0, 0xFE00_0000, 16 << 10, True)


# --- bind and restore -------------------------------------------------------------------------


def test_bind_then_restore_after_the_run(kernel, dirs):
    with passthrough(kernel, dirs, [NVME]) as p:
        assert driver_of(kernel, NVME) == "vfio-pci"
        assert override_of(kernel, NVME) == "vfio-pci"
        assert p.group_nodes() == [kernel.path("dev/vfio/5")]
        assert p.qemu_args() == ["-device", "vfio-pci,host=0000:01:00.0"]
        assert p.qemu_args({NVME: False}) == ["-device", "vfio-pci,host=0000:01:00.0,rombar=0"]
        state = json.loads((dirs["registry"] / "0000:01:00.0.json").read_text())
        assert state["driver"] == "nvme" and state["override"] is None
        assert state["owner"]["pid"] == os.getpid()
        assert (dirs["run_dir"] / "vfio/0000:01:00.0.json").exists()
    # libvirt's order, both ways
    assert kernel.writes == [
        ("sys/bus/pci/devices/0000:01:00.0/driver_override", "vfio-pci"),
        ("sys/bus/pci/drivers/nvme/unbind", "0000:01:00.0"),
        ("sys/bus/pci/drivers_probe", "0000:01:00.0"),
        ("sys/bus/pci/devices/0000:01:00.0/driver_override", "\n"),
        ("sys/bus/pci/drivers/vfio-pci/unbind", "0000:01:00.0"),
        ("sys/bus/pci/drivers/nvme/bind", "0000:01:00.0"),
    ]
    assert driver_of(kernel, NVME) == "nvme" and override_of(kernel, NVME) is None
    assert not kernel.exists("dev/vfio/5")
    assert registry_files(dirs) == []
    record = json.loads((dirs["run_dir"] / "vfio/0000:01:00.0.json").read_text())
    assert record["restored"] is not None
    assert [r.message for r in p.restored] == ["0000:01:00.0 back on nvme"]


def test_state_file_is_written_before_anything_changes(kernel, dirs):
    seen = {}

    def first_write():
        seen["state"] = Registry(dirs["registry"]).read(NVME)
        seen["driver"] = driver_of(kernel, NVME)

    kernel.on_write("sys/bus/pci/devices/0000:01:00.0/driver_override", first_write)
    with passthrough(kernel, dirs, [NVME]):
        pass
    assert seen["driver"] == "nvme"
    assert seen["state"].driver == "nvme" and seen["state"].bdf == NVME


@pytest.mark.parametrize("exc", [RuntimeError("QEMU exited with signal 11"), KeyboardInterrupt()])
def test_restore_after_a_crash_or_ctrl_c(kernel, dirs, exc):
    with pytest.raises(type(exc)):
        with passthrough(kernel, dirs, [NVME]):
            assert driver_of(kernel, NVME) == "vfio-pci"
            raise exc
    assert driver_of(kernel, NVME) == "nvme" and override_of(kernel, NVME) is None
    assert registry_files(dirs) == []


def test_restore_keeps_a_recorded_override(kernel, dirs):
    kernel.write("sys/bus/pci/devices/0000:01:00.0/driver_override", "nvme")
    kernel.writes.clear()
    with passthrough(kernel, dirs, [NVME]):
        assert override_of(kernel, NVME) == "vfio-pci"
    assert override_of(kernel, NVME) == "nvme" and driver_of(kernel, NVME) == "nvme"


def test_device_without_a_driver_stays_without_one(fake, kernel, dirs):
    fake.add_device("0000:07:00.0", "1234:5678", 0x120000, group=11)
    bdf = Bdf.parse("0000:07:00.0")
    with passthrough(kernel, dirs, [bdf]):
        assert driver_of(kernel, bdf) == "vfio-pci"
    assert driver_of(kernel, bdf) is None
    assert ("sys/bus/pci/drivers_probe", "0000:07:00.0") not in kernel.writes[3:]


def test_a_device_already_on_vfio_is_left_there(fake, kernel, dirs):
    fake.add_device("0000:07:00.0", "1234:5678", 0x120000, driver="vfio-pci", group=11)
    bdf = Bdf.parse("0000:07:00.0")
    with passthrough(kernel, dirs, [bdf]):
        pass
    assert driver_of(kernel, bdf) == "vfio-pci"
    assert [w for w in kernel.writes if "unbind" in w[0] or "probe" in w[0]] == []


def test_a_whole_group_is_bound_and_restored_together(kernel, dirs):
    with passthrough(kernel, dirs, [GPU, GPU_AUDIO]):
        assert driver_of(kernel, GPU) == driver_of(kernel, GPU_AUDIO) == "vfio-pci"
    assert driver_of(kernel, GPU) == "nouveau"
    assert driver_of(kernel, GPU_AUDIO) == "snd_hda_intel"
    assert not kernel.exists("dev/vfio/6")


# --- failures half-way --------------------------------------------------------------------------


def test_unbind_failing_half_way_is_undone(kernel, dirs):
    kernel.fail("sys/bus/pci/drivers/nvme/unbind", errno.EBUSY)
    with pytest.raises(BindError) as e:
        with passthrough(kernel, dirs, [NVME]):
            pytest.fail("the with body must not run")
    assert e.value.exit_code == EXIT_INFRA
    assert "0000:01:00.0" in str(e.value) and "Device or resource busy" in str(e.value)
    # driver_override had been written: it is back, the device never left nvme
    assert override_of(kernel, NVME) is None and driver_of(kernel, NVME) == "nvme"
    assert registry_files(dirs) == []


def test_second_device_failing_restores_the_first(kernel, dirs):
    kernel.fail("sys/bus/pci/drivers_probe", errno.ENODEV)  # the first probe: GPU's
    with pytest.raises(BindError):
        with passthrough(kernel, dirs, [NVME, GPU, GPU_AUDIO]):
            pass
    assert driver_of(kernel, NVME) == "nvme"
    assert driver_of(kernel, GPU) == "nouveau"
    assert driver_of(kernel, GPU_AUDIO) == "snd_hda_intel"
    assert registry_files(dirs) == []


def test_probe_that_binds_nothing_is_an_error_and_undone(kernel, dirs):
    kernel.probe_fails.add("vfio-pci")
    with pytest.raises(BindError, match="vfio-pci did not take the device"):
        with passthrough(kernel, dirs, [NVME], settle_s=0.2):
            pass
    assert driver_of(kernel, NVME) == "nvme"
    assert registry_files(dirs) == []


def test_device_disappearing_during_bind_is_reported(fake, kernel, dirs):
    kernel.on_write("sys/bus/pci/drivers_probe", lambda: fake.remove_device("0000:01:00.0"))
    with pytest.raises(BindError, match="has disappeared"):
        with passthrough(kernel, dirs, [NVME]):
            pass
    assert registry_files(dirs) == []  # nothing left to restore: the function is gone
    record = json.loads((dirs["run_dir"] / "vfio/0000:01:00.0.json").read_text())
    assert record["restored"] is not None


def test_restore_falls_back_to_a_reprobe(kernel, dirs):
    with passthrough(kernel, dirs, [NVME]):
        kernel.fail("sys/bus/pci/drivers/nvme/bind", errno.ENODEV)
    assert driver_of(kernel, NVME) == "nvme"
    assert kernel.writes[-2:] == [
        ("sys/bus/pci/drivers/nvme/bind", "0000:01:00.0"),
        ("sys/bus/pci/drivers_probe", "0000:01:00.0"),
    ]


def test_restore_gives_the_device_to_its_recorded_driver_not_the_probe_winner(fake, kernel, dirs):
    # The device was bound by hand to a second matching driver; a reprobe would pick nvme.
    fake.add_driver("nvme-alt", ("144d:a808",))
    kernel.write("sys/bus/pci/drivers/nvme/unbind", "0000:01:00.0")
    kernel.write("sys/bus/pci/drivers/nvme-alt/bind", "0000:01:00.0")
    with passthrough(kernel, dirs, [NVME]):
        pass
    assert driver_of(kernel, NVME) == "nvme-alt"


def test_failed_restore_keeps_the_state_and_says_what_to_run(kernel, dirs):
    with pytest.raises(RestoreError) as e:
        with passthrough(kernel, dirs, [NVME]):
            kernel.fail("sys/bus/pci/drivers/vfio-pci/unbind", errno.EBUSY)
    msg = str(e.value)
    assert e.value.exit_code == EXIT_INFRA
    assert "0000:01:00.0" in msg and "state file is kept" in msg
    assert registry_files(dirs) == ["0000:01:00.0.json"]
    assert driver_of(kernel, NVME) == "vfio-pci"
    run_by_hand(kernel, msg)  # the commands it prints are the right ones
    assert driver_of(kernel, NVME) == "nvme" and override_of(kernel, NVME) is None
    assert registry_files(dirs) == []


def test_failed_restore_of_an_unloaded_driver_says_modprobe(fake, kernel, dirs):
    with pytest.raises(RestoreError) as e:
        with passthrough(kernel, dirs, [NVME]):
            fake.unload_driver("nvme")  # rmmod nvme meanwhile
    msg = str(e.value)
    assert "By hand, as root: modprobe nvme; echo > " in msg
    assert "echo 0000:01:00.0 > /sys/bus/pci/drivers/nvme/bind" in msg
    assert registry_files(dirs) == ["0000:01:00.0.json"]


def test_failed_restore_after_failed_bind_reports_both(kernel, dirs):
    kernel.fail("sys/bus/pci/drivers_probe", errno.ENODEV)
    kernel.fail("sys/bus/pci/drivers/vfio-pci/unbind", errno.EBUSY)
    # the probe write fails, yet vfio-pci got the device; then it will not let go
    kernel.on_write("sys/bus/pci/drivers_probe", lambda: kernel._attach("vfio-pci", "0000:01:00.0"))
    with pytest.raises(RestoreError) as e:
        with passthrough(kernel, dirs, [NVME]):
            pass
    assert "writing '0000:01:00.0' to /sys/bus/pci/drivers_probe failed" in str(e.value)
    assert "By hand, as root:" in str(e.value)
    assert registry_files(dirs) == ["0000:01:00.0.json"]


def test_a_leftover_of_this_process_is_retried_by_its_next_run(kernel, dirs):
    with pytest.raises(RestoreError):
        with passthrough(kernel, dirs, [NVME]):
            kernel.fail("sys/bus/pci/drivers/vfio-pci/unbind", errno.EBUSY)
    # hil batch: the next scenario in the same process may take the device again
    with passthrough(kernel, dirs, [NVME]):
        assert driver_of(kernel, NVME) == "vfio-pci"
    assert driver_of(kernel, NVME) == "nvme" and registry_files(dirs) == []


# --- preflight refusals (nothing on the host changes) ------------------------------------------


def refused(kernel, dirs, bdfs, **kw) -> str:
    with pytest.raises(InfraError) as e:
        with passthrough(kernel, dirs, bdfs, **kw):
            pytest.fail("the with body must not run")
    assert e.value.exit_code == EXIT_INFRA
    assert kernel.writes == [], "a refused device must leave the host untouched"
    assert registry_files(dirs) == []
    return str(e.value)


def test_group_with_a_foreign_member_is_refused(kernel, dirs):
    msg = refused(kernel, dirs, [GPU])
    assert "passthrough 0000:02:00.0" in msg and "IOMMU group 6" in msg
    assert "0000:02:00.1" in msg and "snd_hda_intel" in msg
    assert "pass 0000:02:00.1 through as well" in msg


def test_group_members_that_are_bridges_or_unbound_are_fine(fake, kernel, dirs):
    with passthrough(kernel, dirs, [BEHIND_PORT]):  # shares group 10 with its pcieport
        assert driver_of(kernel, BEHIND_PORT) == "vfio-pci"
    assert driver_of(kernel, PORT) == "pcieport"
    fake.add_device("0000:02:00.2", "10de:1ad8", 0x0C0330, group=6)  # driverless
    with passthrough(kernel, dirs, [GPU, GPU_AUDIO]):
        pass


def test_no_iommu_is_refused(fake, kernel, dirs):
    (fake.root / "sys/class/iommu/dmar0").rmdir()
    msg = refused(kernel, dirs, [NVME])
    assert "no IOMMU is active" in msg and "intel_iommu=on iommu=pt" in msg
    assert "unsafe_noiommu: true" in msg


def test_no_iommu_allowed_only_with_unsafe_mode_on(tmp_path, dirs):
    fake = FakeHost(tmp_path / "noiommu")
    fake.load_vfio(noiommu=False)
    fake.add_driver("nvme", ("144d:a808",))
    fake.add_device("0000:01:00.0", "144d:a808", driver="nvme")  # no group: no IOMMU
    kernel = FakeKernel(fake.root)
    msg = refused(kernel, dirs, [NVME], allow_noiommu=True)
    assert "unsafe no-IOMMU mode is off" in msg and "echo Y >" in msg
    (fake.root / "sys/module/vfio/parameters/enable_unsafe_noiommu_mode").write_text("Y\n")
    with passthrough(kernel, dirs, [NVME], allow_noiommu=True) as p:
        assert driver_of(kernel, NVME) == "vfio-pci"
        [node] = p.group_nodes()
        assert node.name.startswith("noiommu-")
    assert driver_of(kernel, NVME) == "nvme"
    assert list((fake.root / "dev/vfio").iterdir()) == [fake.root / "dev/vfio/vfio"]


def test_root_filesystem_device_is_refused(kernel, dirs):
    msg = refused(kernel, dirs, [ROOT_DISK])
    assert "passthrough 0000:04:00.0" in msg and "root filesystem" in msg


def test_root_filesystem_on_device_mapper_is_refused(fake, kernel, dirs):
    fake.set_root_on_dm("0000:01:00.0")
    assert "root filesystem" in refused(kernel, dirs, [NVME])


def test_root_port_above_the_root_disk_is_refused(fake, kernel, dirs):
    (fake.root / "proc/self/mountinfo").write_text("")
    fake.set_root_disk("0000:06:00.0", disk="nvme1n1", majmin="259:4")
    assert "root filesystem" in refused(kernel, dirs, [BEHIND_PORT])
    assert PciHost(kernel).protected()[PORT].startswith("it holds the host's root filesystem")


def test_default_route_nic_is_refused(kernel, dirs):
    msg = refused(kernel, dirs, [NIC])
    assert "default route" in msg and "enp3s0" in msg


def test_default_route_through_a_bond_is_refused(fake, kernel, dirs):
    (fake.root / "proc/net/route").write_text("Iface\tDestination\n")
    fake.add_device("0000:08:00.0", "8086:10d3", 0x020000, driver="e1000e", group=12)
    fake.set_default_route("0000:08:00.0", "enp8s0", bond="bond0")
    assert "interface bond0" in refused(kernel, dirs, [Bdf.parse("0000:08:00.0")])


def test_device_without_reset_is_refused(kernel, dirs):
    msg = refused(kernel, dirs, [NO_RESET])
    assert "passthrough 0000:05:00.0" in msg and "no reset method" in msg


def test_an_empty_reset_method_file_means_no_reset(fake, kernel, dirs):
    (fake.root / fake.device_path("0000:01:00.0") / "reset_method").write_text("\n")
    assert "no reset method" in refused(kernel, dirs, [NVME])


def test_a_bridge_is_refused(kernel, dirs):
    assert "PCI bridge" in refused(kernel, dirs, [PORT])


def test_every_problem_of_every_device_in_one_message(kernel, dirs):
    msg = refused(kernel, dirs, [NO_RESET, ROOT_DISK])
    assert "0000:05:00.0: it has no reset method" in msg
    assert "0000:04:00.0: it holds the host's root filesystem" in msg


def test_vfio_not_loaded_is_loaded_with_modprobe(tmp_path, dirs):
    fake = FakeHost(tmp_path / "h")
    fake.add_iommu()
    fake.add_driver("nvme", ("144d:a808",))
    fake.add_device("0000:01:00.0", "144d:a808", driver="nvme", group=5)
    kernel = FakeKernel(fake.root)
    calls = []

    def modprobe(argv):
        calls.append(list(argv))
        fake.load_vfio()
        return 0, ""

    with passthrough(kernel, dirs, [NVME], runner=modprobe):
        assert driver_of(kernel, NVME) == "vfio-pci"
    assert calls == [["modprobe", "vfio-pci"]]


def test_vfio_that_will_not_load_is_refused(tmp_path, dirs):
    fake = FakeHost(tmp_path / "h")
    fake.add_iommu()
    fake.add_driver("nvme", ("144d:a808",))
    fake.add_device("0000:01:00.0", "144d:a808", driver="nvme", group=5)

    def modprobe(argv):
        return 1, "modprobe: FATAL: Module vfio-pci not found in directory /lib/modules/6.1.0"

    msg = refused(FakeKernel(fake.root), dirs, [NVME], runner=modprobe)
    assert "Module vfio-pci not found" in msg and "CONFIG_VFIO_PCI" in msg


def test_group_node_the_user_may_not_open_is_refused_and_undone(kernel, dirs):
    class NoVfioAccess(FakeKernel):
        def may_open(self, rel):
            return not rel.startswith("dev/vfio/") and super().may_open(rel)

    kernel = NoVfioAccess(kernel.root)
    with pytest.raises(BindError, match="may not open /dev/vfio/5"):
        with passthrough(kernel, dirs, [NVME]):
            pass
    assert driver_of(kernel, NVME) == "nvme" and registry_files(dirs) == []


def test_unknown_and_duplicate_devices_are_user_errors(kernel, dirs):
    for bdfs, words in (
        ([Bdf.parse("0000:09:00.0")], "this host has no PCI device 0000:09:00.0"),
        ([NVME, NVME], "0000:01:00.0 is listed twice"),
    ):
        with pytest.raises(UserError, match=words) as e:
            with passthrough(kernel, dirs, bdfs, where="gpu.yaml:7: passthrough"):
                pass
        assert e.value.exit_code == EXIT_INVALID
        assert str(e.value).startswith("gpu.yaml:7: passthrough: ")
    assert kernel.writes == [] and registry_files(dirs) == []


# --- ownership, SIGKILL, pid reuse ------------------------------------------------------------


def spawn_holder(fake, dirs, bdf) -> subprocess.Popen:
    code = "import sys; from tests.vfio_fakes import hold_device; hold_device(*sys.argv[1:])"
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(fake.root), str(dirs["registry"]),
         str(dirs["run_dir"]), str(bdf)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = child.stdout.readline()
    if line != "bound\n":
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"the child did not bind: {line!r} {err}")
    return child


def test_restore_after_sigkill_of_a_real_process(fake, kernel, dirs):
    child = spawn_holder(fake, dirs, NVME)
    try:
        assert driver_of(kernel, NVME) == "vfio-pci"
        assert restore_stale(dirs["registry"], sysfs=kernel) == []  # its owner is alive
        assert driver_of(kernel, NVME) == "vfio-pci"
        child.send_signal(signal.SIGKILL)
        # Not reaped yet: a zombie is a dead owner too.
        deadline = time.monotonic() + 30
        while Processes().owner(child.pid) is not None:
            assert time.monotonic() < deadline, "the child did not die"
            time.sleep(0.01)
        done = restore_stale(dirs["registry"], sysfs=kernel)
    finally:
        child.kill()
        child.communicate()
    assert done == [f"0000:01:00.0 back on nvme (left by hil pid {child.pid}, no longer running)"]
    assert driver_of(kernel, NVME) == "nvme" and override_of(kernel, NVME) is None
    assert registry_files(dirs) == []
    assert not kernel.exists("dev/vfio/5")


def test_device_held_by_a_live_hil_is_refused(fake, dirs, tmp_path):
    child = spawn_holder(fake, dirs, NVME)
    try:
        kernel = FakeKernel(fake.root)
        with pytest.raises(DeviceBusy) as e:
            with passthrough(kernel, {**dirs, "run_dir": tmp_path / "run2"}, [NVME]):
                pass
        assert e.value.exit_code == EXIT_INFRA
        assert f"in use by another hil run (pid {child.pid}" in str(e.value)
        assert kernel.writes == [] and driver_of(kernel, NVME) == "vfio-pci"
    finally:
        child.kill()
        child.communicate()
    restore_stale(dirs["registry"], sysfs=FakeKernel(fake.root))
    assert driver_of(kernel, NVME) == "nvme"


def test_a_dead_owners_device_is_restored_then_taken(fake, kernel, dirs, tmp_path):
    child = spawn_holder(fake, dirs, NVME)
    child.kill()
    child.communicate()
    with passthrough(kernel, {**dirs, "run_dir": tmp_path / "run2"}, [NVME]):
        state = Registry(dirs["registry"]).read(NVME)
        assert state.owner.pid == os.getpid() and state.driver == "nvme"
    assert driver_of(kernel, NVME) == "nvme" and registry_files(dirs) == []


def bound_by(kernel, dirs, owner: Owner) -> None:
    """Leave NVME bound to vfio-pci with a state file owned by ``owner``."""
    Registry(dirs["registry"]).claim(
        Record(NVME, "nvme", None, owner, time.time(), str(dirs["run_dir"]))
    )
    kernel.write("sys/bus/pci/devices/0000:01:00.0/driver_override", "vfio-pci")
    kernel.write("sys/bus/pci/drivers/nvme/unbind", "0000:01:00.0")
    kernel.write("sys/bus/pci/drivers_probe", "0000:01:00.0")
    assert driver_of(kernel, NVME) == "vfio-pci"


def test_a_reused_pid_is_not_the_owner(kernel, dirs):
    me = Processes().me()
    bound_by(kernel, dirs, Owner(me.pid, me.start_time - 1, me.boot_id))  # same pid, earlier
    assert restore_stale(dirs["registry"], sysfs=kernel) == [
        f"0000:01:00.0 back on nvme (left by hil pid {me.pid}, no longer running)"
    ]
    assert driver_of(kernel, NVME) == "nvme"


def test_an_owner_from_before_a_reboot_is_not_the_owner(kernel, dirs):
    me = Processes().me()
    bound_by(kernel, dirs, Owner(me.pid, me.start_time, "another-boot"))
    assert len(restore_stale(dirs["registry"], sysfs=kernel)) == 1
    assert driver_of(kernel, NVME) == "nvme"


def test_a_live_owner_is_left_alone(kernel, dirs):
    bound_by(kernel, dirs, Processes().me())
    assert restore_stale(dirs["registry"], sysfs=kernel) == []
    assert driver_of(kernel, NVME) == "vfio-pci"


def test_restore_stale_goes_on_past_a_bad_file_then_reports_it(kernel, dirs):
    me = Processes().me()
    bound_by(kernel, dirs, Owner(me.pid, me.start_time - 1, me.boot_id))
    (dirs["registry"] / "0000:02:00.0.json").write_text("{not json")
    with pytest.raises(RestoreError) as e:
        restore_stale(dirs["registry"], sysfs=kernel)
    assert "0000:02:00.0.json: not a hil vfio state file" in str(e.value)
    assert e.value.restored == [  # type: ignore[attr-defined]
        f"0000:01:00.0 back on nvme (left by hil pid {me.pid}, no longer running)"
    ]
    assert driver_of(kernel, NVME) == "nvme"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"driver": "../../../../etc"}, "is not a driver name"),
        ({"override": "vfio-pci/../x"}, "is not a driver name"),
        ({"bdf": "0000:02:00.0"}, "names device"),
        ({"version": 99}, "version 99"),
        ({"owner": {"pid": "x"}}, "not a hil vfio state file"),
    ],
)
def test_state_files_are_validated(tmp_path, change, words):
    good = Record(NVME, "nvme", None, Owner(1, 2, "b"), 0.0, "").to_json()
    path = tmp_path / "0000:01:00.0.json"
    path.write_text(json.dumps({**json.loads(good), **change}))
    with pytest.raises(StateError, match=re.escape(words)):
        Registry(tmp_path).read(NVME)


def test_proc_stat_with_a_hostile_command_name(tmp_path):
    (tmp_path / "42").mkdir()
    fields = ["S"] + [str(i) for i in range(4, 22)] + ["777"] + ["0"] * 30
    (tmp_path / "42/stat").write_text(f"42 (evil) 1 2 (x) {' '.join(fields)}\n")
    assert Processes(tmp_path).owner(42) == Owner(42, 777, "")
    (tmp_path / "42/stat").write_text(f"42 (z) {' '.join(['Z'] + fields[1:])}\n")
    assert Processes(tmp_path).owner(42) is None
    assert Processes(tmp_path).owner(43) is None


def test_signals_are_deferred_during_bind_and_restore():
    got = []
    old = signal.signal(signal.SIGINT, lambda *a: got.append(time.monotonic()))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert got == []
            left = time.monotonic()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got and got[0] >= left
    finally:
        signal.signal(signal.SIGINT, old)


# --- doctor ------------------------------------------------------------------------------------


def test_doctor_report_on_the_fake_host(kernel, dirs):
    lines = doctor_report(kernel, registry=dirs["registry"])
    text = "\n".join(lines)
    assert lines[:2] == ["IOMMU: active (dmar0)", "vfio-pci: loaded"]
    assert "IOMMU group 5:" in lines
    assert "  0000:01:00.0  144d:a808  class 010802  driver nvme  bindable" in lines
    assert re.search(
        r"0000:02:00\.0 .* not bindable: its IOMMU group 6 also holds 0000:02:00\.1", text
    )
    assert re.search(r"0000:04:00\.0 .* not bindable: it holds the host's root filesystem", text)
    assert re.search(r"0000:03:00\.0 .* not bindable: it carries the host's default route", text)
    assert re.search(r"0000:05:00\.0 .* not bindable: it has no reset method", text)
    assert kernel.writes == []


class ReadOnlySysfs(Sysfs):
    def write(self, rel, text):
        raise AssertionError(f"doctor_report wrote {text!r} to {rel}")


def _real_pci() -> list[str]:
    try:
        return os.listdir("/sys/bus/pci/devices")
    except OSError:
        return []


@pytest.mark.skipif(not _real_pci(), reason="this machine's /sys lists no PCI devices")
def test_doctor_report_reads_the_real_sys_without_writing(tmp_path):
    real = ReadOnlySysfs("/")
    lines = doctor_report(real, registry=tmp_path / "registry")
    text = "\n".join(lines)
    for name in os.listdir("/sys/bus/pci/devices"):
        assert f"  {name}  " in text, name
    host = PciHost(real)
    for bdf in host.functions():
        f = host.function(bdf)
        assert f.vendor is not None and f.class_code is not None
        assert f.driver == (os.path.basename(os.readlink(f"/sys/bus/pci/devices/{bdf}/driver"))
                            if os.path.exists(f"/sys/bus/pci/devices/{bdf}/driver") else None)  # fmt: skip
        for bar in host.bars(bdf):  # PCI sizes BARs and ROMs in powers of two
            assert bar.size & (bar.size - 1) == 0, (bdf, bar)
    # Whatever holds / and the default route here is never offered.
    for bdf in host.protected():
        assert re.search(rf"{bdf} .* not bindable: .*(root filesystem|default route)", text)


def test_doctor_report_names_who_holds_a_device(fake, kernel, dirs):
    me = Processes().me()
    bound_by(kernel, dirs, Owner(me.pid, me.start_time - 1, me.boot_id))
    fake.add_device("0000:09:00.0", "144d:a808", driver="nvme", group=13)
    child = spawn_holder(fake, dirs, Bdf.parse("0000:09:00.0"))
    try:
        lines = doctor_report(kernel, registry=dirs["registry"])
    finally:
        child.kill()
        child.communicate()
    [dead] = [ln for ln in lines if ln.startswith("  0000:01:00.0")]
    assert dead.endswith(f"hil pid {me.pid}, which died: `hil vfio restore` gives it back")
    [live] = [ln for ln in lines if ln.startswith("  0000:09:00.0")]
    assert live.endswith(f"held by hil pid {child.pid} ({dirs['run_dir']})")
    assert "driver vfio-pci" in live


def test_a_group_another_hil_holds_part_of_is_refused(fake, kernel, dirs, tmp_path):
    fake.add_device("0000:09:00.0", "144d:a808", driver="nvme", group=13)
    fake.add_device("0000:09:00.1", "1234:0001", 0x088000, group=13)  # no driver
    child = spawn_holder(fake, dirs, Bdf.parse("0000:09:00.0"))
    try:
        with pytest.raises(DeviceBusy) as e:
            with passthrough(
                kernel, {**dirs, "run_dir": tmp_path / "run2"}, [Bdf.parse("09:00.1")]
            ):
                pass
    finally:
        child.kill()
        child.communicate()
    assert "shares IOMMU group 13 with 0000:09:00.0" in str(e.value)
    assert f"pid {child.pid}" in str(e.value)
    assert kernel.writes == []


def test_signals_are_deferred_with_other_threads_running():
    # With a second thread alive, a process-directed signal may land on it; the handler
    # still runs in the main thread, and must still wait for the block to end.
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    got = []
    old = signal.signal(signal.SIGTERM, lambda *a: got.append(time.monotonic()))
    try:
        with signals_deferred():
            for _ in range(20):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.005)
            assert got == []
            left = time.monotonic()
        assert len(got) == 1 and got[0] >= left  # raised again once, right away
    finally:
        signal.signal(signal.SIGTERM, old)
        stop.set()
        other.join()


NOBODY = 65534


@pytest.fixture
def shared_tmp():
    """A directory user nobody may read (pytest's own tmp_path is root's alone)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="hil-vfio-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_a_non_root_hil_leaves_devices_alone_and_says_it_cannot_restore(shared_tmp):
    fake = FakeHost(shared_tmp / "host")
    fake.add_iommu()
    fake.load_vfio()
    fake.add_driver("nvme", ("144d:a808",))
    fake.add_device("0000:01:00.0", "144d:a808", driver="nvme", group=5)
    fake.add_device("0000:09:00.0", "144d:a808", driver="nvme", group=13)
    kernel = FakeKernel(fake.root)
    dirs = {"run_dir": shared_tmp / "run", "registry": shared_tmp / "registry"}
    me = Processes().me()
    reg = Registry(dirs["registry"])
    with reg.locked():  # as hil does: the lock first, so .lock exists for everyone
        bound_by(kernel, dirs, Owner(me.pid, me.start_time - 1, me.boot_id))  # dead owner
        reg.claim(Record(Bdf.parse("09:00.0"), "nvme", None, me, time.time(), ""))  # live
    code = (
        "import sys\n"
        "from hil.vfio import restore_stale, RestoreError\n"
        "from tests.vfio_fakes import FakeKernel\n"
        "try:\n"
        "    print('restored', restore_stale(sys.argv[2], sysfs=FakeKernel(sys.argv[1])))\n"
        "except RestoreError as e:\n"
        "    print('error', e)\n"
    )
    p = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", code, str(fake.root), str(dirs["registry"])],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("error passthrough 0000:01:00.0: could not give the device back")
    assert "Permission denied" in p.stdout and "By hand, as root: " in p.stdout
    assert "0000:09:00.0" not in p.stdout  # a live run's device is none of its business
    assert driver_of(kernel, NVME) == "vfio-pci"
    assert sorted(q.name for q in reg.entries()) == ["0000:01:00.0.json", "0000:09:00.0.json"]
