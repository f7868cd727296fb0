"""`hil run` end to end: real image, real QEMU (TCG), real pty, real QMP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil import host

from .conftest import assert_no_leftovers, qemu_processes

BOOT_STEPS = """\
steps:
  - expect: '@stage ready'
    timeout: 30
"""


def test_boot_scenario_passes(hil):
    r = hil("run", "scenarios/boot.yaml")
    assert r.code == 0, r.out + r.err
    assert r.out.startswith("PASS  boot: all 10 steps passed")
    run = r.run
    assert run["verdict"]["outcome"] == "pass" and run["exit_code"] == 0
    m = run["metrics"]
    assert 0 < m["boot_ms"] < 60_000 and m["cpu_idle"] >= 0.99
    for stage in ("kernel", "pci", "ready"):
        assert m[f"stage_ms.{stage}"] <= m["boot_ms"]
    assert m["tsc_khz"] > 0 and m["busy_tsc"] > 0 and m["halt_tsc"] > m["busy_tsc"]
    assert run["accel"] in ("tcg", "kvm") and run["accel_reason"].startswith("auto:")
    assert run["idle_windows"][0]["method"] in ("tcg-thread-time", "kvm-halt-wait")
    assert run["qemu"]["exit_status"] == 1 and run["qemu"]["version"].startswith("QEMU")
    assert run["image"]["size"]["counted"] <= run["image"]["size"]["budget"]
    assert run["git"]["commit"] and run["profile"]["name"] == "q35-auto"
    d = r.run_dirs[0]
    for f in ("run.json", "serial.log", "qemu.log", "junit.xml", "image-size.txt"):
        assert (d / f).is_file(), f
    first = (d / "serial.log").read_text().splitlines()[0].split(maxsplit=1)
    assert float(first[0]) > 0 and first[1].startswith("pxOS microkernel")
    suite = ET.parse(d / "junit.xml").getroot()
    assert suite.get("tests") == "11" and suite.get("failures") == "0"


@pytest.mark.parametrize("profile", ["q35-tcg-pvh", "pc-tcg-bios", "q35-kvm-pvh"])
def test_other_boot_paths(hil, profile):
    if profile.startswith("q35-kvm") and not host.kvm().usable:
        pytest.skip(f"KVM unusable: {host.kvm().reason}")
    sc = hil.scenario(
        f"profile: {profile}\n"
        + BOOT_STEPS
        + """\
  - check: pci
  - idle: 0.5
  - send: shutdown
  - exit: shutdown
"""
    )
    r = hil("run", str(sc))
    assert r.code == 0, r.out + r.err
    run = r.run
    path = "pvh" if "pvh" in profile else "bios"
    serial = (r.run_dirs[0] / "serial.log").read_text()
    assert f"pxOS microkernel 0.1.0 {path}" in serial
    assert run["metrics"]["cpu_idle"] >= 0.99
    expected_method = "kvm-halt-wait" if "kvm" in profile else "tcg-thread-time"
    assert run["idle_windows"][0]["method"] == expected_method


def test_missing_line_fails_with_transcript(hil):
    sc = hil.scenario(
        "profile: q35-tcg-bios\n"
        + BOOT_STEPS
        + """\
  - name: the impossible
    expect: 'this line never comes'
    timeout: 1
"""
    )
    r = hil("run", str(sc))
    assert r.code == 1, r.out + r.err
    assert "FAIL" in r.out and "no line matching 'this line never comes' within 1 s" in r.out
    # line 6: hil.scenario() puts 'name:' first, then profile, steps, step 1 (2 lines)
    assert f"at step 2 (the impossible) ({sc}:6)" in r.out
    assert "expected: a line matching 'this line never comes'" in r.out
    assert "console lines (ms since launch):" in r.out
    assert "@stage ready" in r.out  # the transcript excerpt
    v = r.run["verdict"]
    assert v["step"] == 1 and v["category"] == "expectation" and v["evidence"]
    suite = ET.parse(r.run_dirs[0] / "junit.xml").getroot()
    assert suite.get("failures") == "1"


def test_boot_fault_option_reports_the_exception(hil):
    sc = hil.scenario("profile: q35-tcg-pvh\nimage: {boot_fault: true}\n" + BOOT_STEPS)
    r = hil("run", str(sc))
    assert r.code == 1, r.out + r.err
    v = r.run["verdict"]
    assert v["category"] == "guest-exception", v
    assert "vector 6 (#UD invalid opcode)" in v["reason"]
    assert "status 77" in v["reason"]  # (0x20 + 6) * 2 + 1, docs/console.md
    assert any("!EXC vec=6" in e for e in v["evidence"])


@pytest.mark.parametrize("command, vector", [("ud", 6), ("pf", 14)])
def test_exception_commands(hil, command, vector):
    sc = hil.scenario(
        "profile: q35-tcg-bios\n"
        + BOOT_STEPS
        + f"""\
  - send: {command}
  - expect: never
    timeout: 10
"""
    )
    r = hil("run", str(sc))
    assert r.code == 1
    v = r.run["verdict"]
    assert v["category"] == "guest-exception" and f"vector {vector} " in v["reason"]
    exc = next(e for e in v["evidence"] if "!EXC" in e)
    if vector == 14:
        cr2 = int(exc.split("cr2=")[1].split()[0], 16)
        assert cr2 >= 1 << 32  # the unmapped address above the identity map


def test_unexpected_qemu_death_is_reported(hil):
    sc = hil.scenario(
        "profile: q35-tcg-bios\n"
        + BOOT_STEPS
        + """\
  - idle: 20
"""
    )
    p = hil.spawn(sc)
    pid = _wait_for_qemu(sc.stem)
    os.kill(pid, signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, out + err
    assert "QEMU was killed by signal 9" in out


def test_missing_qemu_is_an_infrastructure_error(hil, tmp_path):
    # A PATH with the build tools but no qemu-system-x86_64.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("nasm", "gcc", "ld", "objcopy", "as", "git", "setpriv", "qemu-img"):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bindir / tool)
    sc = hil.scenario("profile: q35-tcg-bios\n" + BOOT_STEPS)
    r = hil("run", str(sc), "--retries", "0", env={**hil.env, "PATH": str(bindir)})
    assert r.code == 3, r.out + r.err
    assert "ERROR" in r.out and "qemu-system-x86_64 is not installed" in r.out
    assert "qemu-system-x86" in r.out  # the package to install
    assert r.run["verdict"]["category"] == "infra"


def test_overall_timeout_exit_code(hil):
    sc = hil.scenario(
        "profile: q35-tcg-bios\ntimeout: 3\n"
        + BOOT_STEPS
        + """\
  - expect: never
    timeout: 100
"""
    )
    t0 = time.monotonic()
    r = hil("run", str(sc))
    assert r.code == 4, r.out + r.err
    assert time.monotonic() - t0 < 30
    assert r.run["verdict"]["outcome"] == "timeout"
    assert "3 s timeout expired" in r.out


def _wait_for_qemu(name: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = qemu_processes(f"pxos-{name},")
        qemu = [ln for ln in procs if "qemu-system" in ln.split()[1]]
        if qemu:
            time.sleep(1.0)  # let it boot into the idle window
            return int(qemu[0].split()[0])
        time.sleep(0.1)
    raise AssertionError("QEMU never started")


def test_ctrl_c_stops_everything(hil):
    sc = hil.scenario(
        "profile: q35-tcg-bios\n"
        + BOOT_STEPS
        + """\
  - idle: 30
"""
    )
    p = hil.spawn(sc)
    _wait_for_qemu(sc.stem)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, out + err
    assert "INTERRUPTED" in out and "Traceback" not in err
    run_dir = next(hil.results.glob(f"{sc.stem}/*"))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["verdict"]["outcome"] == "interrupted" and run["verdict"]["step"] == 1
    assert_no_leftovers(hil)


def test_killed_hil_takes_qemu_with_it(hil):
    sc = hil.scenario(
        "profile: q35-tcg-bios\n"
        + BOOT_STEPS
        + """\
  - idle: 30
"""
    )
    p = hil.spawn(sc, quiet_output=True)
    _wait_for_qemu(sc.stem)
    p.kill()
    p.wait()
    deadline = time.monotonic() + 5
    while qemu_processes(f"pxos-{sc.stem},") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not qemu_processes(f"pxos-{sc.stem},")
    # A SIGKILLed process cannot clean its temp dir; that is the one thing left.
    for d in hil.tmpdir.iterdir():
        shutil.rmtree(d)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_source_disks_are_never_modified(hil, tmp_path, image_cache):
    src = tmp_path / "source.img"
    src.write_bytes(b"\xa5" * (1 << 20))
    before = _sha(src)
    sc = hil.scenario(
        f"""\
profile: q35-tcg-bios
devices:
  - nvme: {{file: {src}}}
"""
        + BOOT_STEPS
        + "  - check: pci\n"
    )
    r = hil("run", str(sc))
    assert r.code == 0, r.out + r.err
    assert _sha(src) == before
    boot_disk = Path(r.run["image"]["dir"]) / "disk.img"
    assert "snapshot=on" in " ".join(r.run["qemu"]["argv"])
    before_disk = _sha(boot_disk)
    r = hil("run", str(sc))
    assert r.code == 0 and _sha(boot_disk) == before_disk
    assert r.run["image"]["cached"] is True


@pytest.mark.parametrize("profile", ["q35-tcg-bios", "q35-tcg-pvh"])
def test_devices_scenario_matches_qmp(hil, profile):
    r = hil("run", "scenarios/devices.yaml", "--profile", profile)
    assert r.code == 0, r.out + r.err
    d = r.run_dirs[0]
    assert (d / "nic0.pcap").is_file() and (d / "nic1.pcap").is_file()
    assert not list(d.glob("*.img")), "per-run disks are removed unless --keep-disks"


def test_devices_on_the_legacy_pc(hil):
    sc = hil.scenario("""\
profile: pc-tcg-bios
devices:
  - nvme: {size: 1M}
  - nic: {model: e1000}
  - usb: {storage: 1M}
  - display: {model: bochs}
steps:
  - lines:
      - {regex: '^pci 00:0[0-9a-f]\\.0 1b36:0010 010802 bar0=m64:'}
      - {regex: '^gpu 00:0[0-9a-f]\\.0 1234:1111 038000$'}
    ordered: false
    timeout: 30
  - check: pci
""")
    r = hil("run", str(sc), "--keep-disks")
    assert r.code == 0, r.out + r.err
    assert list(r.run_dirs[0].glob("nvme0.img"))


def test_exit_is_seen_without_qmp_steps(hil):
    """Regression: with no step that waits for QMP, hil kept its copy of the pty slave
    open, never saw EOF when QEMU exited, and an `exit` step timed out."""
    sc = hil.scenario(
        "profile: q35-tcg-pvh\n"
        + BOOT_STEPS
        + """\
  - send: shutdown
  - exit: shutdown
    timeout: 5
"""
    )
    r = hil("run", str(sc))
    assert r.code == 0, r.out + r.err
