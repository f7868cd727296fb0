"""Image kinds under the same scenarios, steps and metrics (issue 13): the shipped Linux
scenario, and a user's own kernel (the Linux image's bzImage and initramfs, given as
files of kind `kernel`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def linux_run(tmp_path_factory, image_cache):
    from .conftest import Hil

    hil = Hil(tmp_path_factory.mktemp("linux"), image_cache)
    r = hil("run", "scenarios/linux-boot.yaml", timeout=400)
    assert r.code == 0, r.out + r.err
    return r.run


def test_linux_boot_scenario(linux_run):
    run = linux_run
    assert run["image"]["kind"] == "linux" and run["image_kind"] == "linux"
    assert run["image"]["kernel_version"].endswith("-amd64")
    m = run["metrics"]
    stages = ["kernel", "initramfs", "init", "modules", "run", "done", "poweroff"]
    times = [m[f"linux_ms.{s}"] for s in stages]
    assert times == sorted(times) and m["boot_ms"] == m["linux_ms.init"]
    assert "needs" in run["qemu"]["memory_note"]  # the 128 MiB profile was raised


def test_a_users_kernel_with_the_same_steps(linux_run, hil):
    img = Path(linux_run["image"]["dir"])
    kernel, initrd = img / "vmlinuz", img / "initrd.img"
    before = kernel.stat().st_mtime_ns, initrd.stat().st_mtime_ns
    sc = hil.scenario(
        f"""\
profile: q35-tcg-bios      # Linux powers off through ACPI (the PVH profiles turn it off)
timeout: 240
image: {{kind: kernel, kernel: {kernel}, initrd: {initrd}, append: 'console=ttyS0 panic=-1'}}
ready: 'Run /init as init process'
fail_on: ['Kernel panic - not syncing']
steps:
  - expect: 'Run /init as init process'
    timeout: 180
  - expect: '@linux done rc=0'
    timeout: 60
  - exit: 0
"""
    )
    r = hil("run", str(sc), timeout=400)
    assert r.code == 0, r.out + r.err
    run = r.run
    assert run["image"]["kind"] == "kernel" and run["image"]["format"] == "bzimage"
    assert run["metrics"]["boot_ms"] > 0
    assert "-append" in run["qemu"]["argv"] and str(kernel) in run["qemu"]["argv"]
    assert (kernel.stat().st_mtime_ns, initrd.stat().st_mtime_ns) == before  # never modified


def test_linux_fio_reference_scenario(hil):
    """The reference for the pixel NVMe driver: fio's report parsed into metrics."""
    r = hil("run", "scenarios/linux-nvme-fio.yaml", "--retries", "2", timeout=900)
    if r.code == 3:
        # QEMU 7.2's NVMe model missing a doorbell under fio (its bug, docs/images.md) is
        # an infrastructure error by the scenario's infra_on; on a loaded host it can hit
        # every attempt. That is not this project's failure: say so, do not hide it.
        reasons = [
            json.loads((d / "run.json").read_text())["verdict"]["reason"] for d in r.run_dirs
        ]
        if all("an infra_on pattern matched" in x and "timeout" in x for x in reasons):
            pytest.skip(
                f"QEMU's NVMe model missed a doorbell in all {len(reasons)} attempts: {reasons[-1]}"
            )
    assert r.code == 0, r.out + r.err
    runs = [json.loads((d / "run.json").read_text()) for d in r.run_dirs]
    run = next(x for x in runs if x["verdict"]["outcome"] == "pass")  # retries: the last
    m = run["metrics"]
    for qd in (1, 16):
        assert m[f"fio.qd{qd}.iops"] > 0 and m[f"fio.qd{qd}.errors"] == 0
        assert 0 < m[f"fio.qd{qd}.clat_p50_ns"] <= m[f"fio.qd{qd}.clat_p99_ns"]
    assert "fio" in run["image"]["packages"]


def test_a_kernel_panic_is_caught_by_fail_on_and_quoted(linux_run, hil):
    """Debian's kernel with no initramfs and a root that does not exist: it panics; the
    scenario's fail_on catches the line and the verdict quotes it."""
    kernel = Path(linux_run["image"]["dir"]) / "vmlinuz"
    sc = hil.scenario(
        f"""\
profile: q35-tcg-bios
timeout: 240
image: {{kind: kernel, kernel: {kernel}, append: 'console=ttyS0 panic=-1 root=/dev/nonexistent'}}
ready: {{regex: 'Linux version'}}
fail_on: ['Kernel panic - not syncing']
steps:
  - expect: 'this line never comes'
    timeout: 200
"""
    )
    r = hil("run", str(sc), timeout=400)
    assert r.code == 1, r.out + r.err
    v = r.run["verdict"]
    assert v["category"] == "fail_on" and "Kernel panic - not syncing" in v["reason"]
    assert len(r.run["steps"]) == 1 and r.run["metrics"]["boot_ms"] > 0


def test_linux_udp_echo_reference_scenario(hil):
    """The reference for the pixel e1000 driver: Linux's e1000 echoing the same traffic off
    the same kind of host peer, its client's summary parsed into metrics, the capture
    judged by the same pcap check."""
    r = hil("run", "scenarios/linux-net-echo.yaml", timeout=600)
    assert r.code == 0, r.out + r.err
    run = r.run
    m = run["metrics"]
    assert m["linux_net.ok"] == 64 and m["linux_net.lost"] == 0 and m["linux_net.bad"] == 0
    assert m["peer.datagrams"] == 64  # the host peer saw each datagram once
    assert 0 < m["linux_net.round_ms.p50"] <= m["linux_net.round_ms.p99"]
    assert m["linux_net.packets_per_s"] > 0
    pcap = next(c for c in run["checks"] if c["name"] == "pcap")
    assert pcap["outcome"] == "pass" and "64 UDP datagrams" in pcap["reason"], pcap
    assert {"python3.11-minimal", "libpython3.11-minimal"} <= set(run["image"]["packages"])
