"""The `linux` and `kernel` image kinds end to end: build a Linux from Debian's packages
(apt, a real download on the first build), boot it in QEMU under TCG with real NVMe,
e1000 and xHCI devices, run fio, power off; a kernel panic; the errors of bad input
and of a missing network.

Timings are printed (pytest -s shows them) and kept as user properties (junit)."""

from __future__ import annotations

import gzip
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hil.errors import UserError
from hil.images import KernelSpec, LinuxSpec, build_linux, inspect_kernel, load_kernel
from hil.images.initscript import PANIC, STAGES, stage_regex

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIO = (
    "fio --name=r --filename=/dev/nvme0n1 --rw=randread --bs=4k --iodepth=16 "
    "--ioengine=libaio --direct=1 --runtime=2 --time_based --output-format=json "
    "--output=/tmp/fio.json --eta=never"
)
FIO_INIT = f"""cat /proc/partitions
ls /sys/class/nvme
{FIO}
echo "@fio-json-begin"
cat /tmp/fio.json
echo "@fio-json-end"
"""
FIO_SPEC = LinuxSpec(packages=("fio",), modules=("nvme",), init=FIO_INIT)
SHELL_SPEC = LinuxSpec(modules=("e1000", "xhci_pci"), init="ls -1 /sys/bus/pci/drivers", shell=True)
NVME_TIMEOUT = r"nvme nvme\d+: I/O \d+ .*timeout"
BOOT_TIMEOUT = 240  # TCG on 2 shared cores; a boot takes ~6 s alone


class Qemu:
    """qemu-system-x86_64 under TCG, serial console on stdio, read line by line with
    the host time of arrival. Always killed on exit."""

    def __init__(self, args: list[str], memory_mb: int, tmp: Path):
        self.cmd = [
            "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", str(memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-no-reboot", *args,
        ]  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self._q: queue.Queue = queue.Queue()
        self.log = tmp / "serial.log"

    def __enter__(self) -> Qemu:
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for raw in self.p.stdout:
            self._q.put((time.monotonic() - self.t0, raw.decode("utf-8", "replace").rstrip("\r\n")))
        self._q.put(None)

    def expect(self, pattern: str, timeout: float = BOOT_TIMEOUT) -> tuple[float, re.Match]:
        """Wait for a line matching `pattern`; returns (host seconds since launch, match)."""
        rx = re.compile(pattern)
        for t, line in self.lines:
            if m := rx.search(line):
                return t, m
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self._fail(pattern, f"no such line in {timeout:.0f} s")
            if item is None:
                self._q.put(None)  # later calls see the end too
                self._fail(pattern, "QEMU exited")
            self.lines.append(item)
            if m := rx.search(item[1]):
                return item[0], m

    def _fail(self, pattern: str, why: str) -> None:
        tail = "\n".join(s for _, s in self.lines[-30:])
        pytest.fail(f"waiting for /{pattern}/: {why}. Console tail:\n{tail}")

    def send(self, text: str) -> None:
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def wait(self, timeout: float = 60) -> int:
        rc = self.p.wait(timeout=timeout)
        while (item := self._q.get(timeout=10)) is not None:
            self.lines.append(item)
        return rc

    def __exit__(self, *exc) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=30)
        self.log.write_text("\n".join(f"{t:9.3f} {s}" for t, s in self.lines) + "\n")


def nvme_args(tmp: Path) -> list[str]:
    disk = tmp / "nvme0.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    return ["-drive", f"file={disk},if=none,id=nvme0,format=raw",
            "-device", "nvme,serial=HILNVME0,drive=nvme0"]  # fmt: skip


@pytest.fixture(scope="module")
def linux_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("linux-cache")


@pytest.fixture(scope="module")
def fio_image(linux_cache):
    t = time.monotonic()
    log: list[str] = []
    img = build_linux(FIO_SPEC, linux_cache, log=log.append)
    first = time.monotonic() - t
    print(f"\nlinux image first build: {first:.1f} s ({'; '.join(log)})")
    return img, first, log


def test_build_is_cached_and_records_what_went_in(fio_image, linux_cache, record_property):
    img, first, log = fio_image
    assert not img.cached
    assert any(s.startswith("downloading ") for s in log) and any("initramfs" in s for s in log)
    t = time.monotonic()
    again = build_linux(FIO_SPEC, linux_cache)
    cached = time.monotonic() - t
    print(f"linux image cached build: {cached * 1000:.0f} ms")
    record_property("build_first_s", round(first, 2))
    record_property("build_cached_s", round(cached, 3))
    assert again.cached and again.key == img.key and again.initrd == img.initrd
    assert re.fullmatch(r"6\.\d+\.\d+-\d+-amd64", img.kernel_version)
    assert img.packages["fio"] and img.packages["busybox-static"]
    assert f"linux-image-{img.kernel_version}" in img.packages
    assert img.modules[-2:] == ("nvme_core", "nvme")
    assert not list(linux_cache.glob(".tmp-*")), "a build directory was left behind"
    # The kernel is Debian's bzImage, recognised by the `kernel` kind's validator.
    info = inspect_kernel(img.kernel)
    assert info.format == "bzimage" and img.kernel_version in info.kernel_version
    # The initramfs holds what the init needs.
    data = gzip.decompress(img.initrd.read_bytes())
    for name in (b"init", b"bin/busybox", b"usr/bin/fio", b"dev/console",
                 b"lib/x86_64-linux-gnu/libaio.so.1", b"lib64/ld-linux-x86-64.so.2",
                 f"lib/modules/{img.kernel_version}/kernel/drivers/nvme/host/nvme.ko".encode()):  # fmt: skip
        assert name + b"\0" in data, name


def test_versions_gone_from_the_archive_are_resolved_again(fio_image, linux_cache):
    img, _, _ = fio_image
    (memo,) = [p for p in (linux_cache / "resolved").glob("*.json")
               if json.loads(p.read_text())["names"] == ["fio"]]  # fmt: skip
    doc = json.loads(memo.read_text())
    doc["packages"] = [[n, "0.0-gone" if n == "fio" else v, a] for n, v, a in doc["packages"]]
    memo.write_text(json.dumps(doc))
    log: list[str] = []
    again = build_linux(FIO_SPEC, linux_cache, log=log.append)
    assert "remembered package versions are gone from the archive; resolving again" in log
    assert again.key == img.key and again.cached
    assert not list(linux_cache.glob(".tmp-*"))


def test_initramfs_is_read_by_busybox_cpio(fio_image, linux_cache, tmp_path):
    """An independent reader of our newc archive: busybox's cpio applet, from the same
    busybox-static package the image uses."""
    img, _, _ = fio_image
    (deb,) = (linux_cache / "debs").glob("busybox-static_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "bb")], check=True)
    busybox = tmp_path / "bb" / "bin" / "busybox"
    archive = gzip.decompress(img.initrd.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run([str(busybox), "cpio", "-i", "-d", "-t"], input=archive,
                       capture_output=True, check=True)  # fmt: skip
    listing = p.stdout.decode().split()
    assert "usr/bin/fio" in listing and "init" in listing and "dev/console" in listing
    subprocess.run([str(busybox), "cpio", "-i", "-d", "init", "usr/bin/fio"], input=archive, cwd=out,
                   capture_output=True, check=True)  # fmt: skip
    assert (out / "init").read_text().startswith("#!/bin/busybox sh")
    assert (out / "usr/bin/fio").read_bytes()[:4] == b"\x7fELF"


def test_fio_on_nvme_boots_runs_and_powers_off(fio_image, tmp_path, record_property):
    img, _, _ = fio_image
    with Qemu([*img.qemu_args(), *nvme_args(tmp_path)], img.memory_mb, tmp_path) as q:
        times = {}
        for stage in STAGES:
            t, m = q.expect(stage.pattern)
            times[stage.name] = t
            if stage.name == "kernel":
                assert m.group(1) == img.kernel_version
            if stage.name == "done":
                assert m.group(1) == "0", "the init's commands failed"
        assert q.wait() == 0, "QEMU did not exit cleanly after poweroff"
    text = [s for _, s in q.lines]
    assert any(re.search(r"^\s*259\s+0\s+65536 nvme0n1$", s) for s in text), "no nvme0n1"
    assert "nvme0" in text
    begin, end = text.index("@fio-json-begin"), text.index("@fio-json-end")
    result = json.loads("\n".join(text[begin + 1 : end]))
    job = result["jobs"][0]
    assert job["error"] == 0 and job["job options"]["iodepth"] == "16"
    assert job["read"]["iops"] > 0 and job["read"]["total_ios"] > 0
    assert job["read"]["clat_ns"]["percentile"]["99.000000"] > 0
    assert not any(re.search(PANIC, s) for s in text)
    assert times == dict(sorted(times.items(), key=lambda kv: kv[1])), "stages out of order"
    # Seen once in ~10 runs on a loaded host: QEMU 7.2's NVMe did not complete some
    # commands until Linux's 30 s timeout aborted them and reset the controller; fio
    # still succeeds, but its numbers are then not a reference (docs/images.md).
    timeouts = [s for s in text if re.search(NVME_TIMEOUT, s)]
    record_property("nvme_timeouts", len(timeouts))
    if timeouts:
        print(f"\nwarning: {len(timeouts)} NVMe timeout lines, first: {timeouts[0]}")
    line = ", ".join(f"{k} {v:.2f}" for k, v in times.items())
    print(f"\nTCG boot (host s since launch): {line}; {len(text)} console lines; "
          f"fio QD16 {job['read']['iops']:.0f} IOPS")  # fmt: skip
    for k, v in times.items():
        record_property(f"boot_s.{k}", round(v, 3))
    record_property("fio_iops", round(job["read"]["iops"]))


def test_kernel_kind_boots_the_debian_bzimage_with_a_shell(linux_cache, tmp_path):
    img = build_linux(SHELL_SPEC, linux_cache)
    user = load_kernel(KernelSpec(img.kernel, img.initrd, img.cmdline))
    assert user.info.format == "bzimage"
    devices = ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0",
               "-device", "qemu-xhci,id=usb0"]  # fmt: skip
    with Qemu([*user.qemu_args(), *devices], img.memory_mb, tmp_path) as q:
        q.expect(r"e1000 0000:\S+ eth0: Intel\(R\) PRO/1000 Network Connection")
        q.expect(r"xhci_hcd 0000:\S+: xHCI Host Controller")
        q.expect(r"^@linux modules n=\d+ ")
        q.expect(r"^e1000$")  # ls /sys/bus/pci/drivers lists the bound driver
        q.expect(stage_regex("done").pattern)
        q.expect(r"^@linux shell$")
        q.send("echo hello-$((6 * 7))\n")
        q.expect(r"^hello-42$", timeout=60)
        q.send("exit\n")
        q.expect(stage_regex("poweroff").pattern, timeout=60)
        assert q.wait() == 0


def test_kernel_panic_on_a_bad_root_is_printed_and_qemu_exits(fio_image, tmp_path):
    img, _, _ = fio_image
    args = ["-kernel", str(img.kernel), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"]
    with Qemu(args, 256, tmp_path) as q:
        _, m = q.expect(PANIC)
        assert "Unable to mount root fs" in m.group(1)
        assert q.wait() == 0  # panic=-1 reboots at once; -no-reboot makes that an exit
    assert any(re.search(r"Call Trace:|Kernel Offset:", s) for _, s in q.lines)


def test_unknown_package_and_module_name_the_key(linux_cache):
    with pytest.raises(
        UserError,
        match=r"image.packages\[1\]: Debian has no installable package 'no-such-package-hil'",
    ):  # noqa: E501
        build_linux(LinuxSpec(packages=("fio", "no-such-package-hil")), linux_cache)
    with pytest.raises(
        UserError,
        match=r"image.modules\[1\]: this kernel \(6\.\S+-amd64\) has no module 'nvme_typo'",
    ):  # noqa: E501
        build_linux(LinuxSpec(modules=("nvme", "nvme_typo")), linux_cache)
    assert not list(linux_cache.glob(".tmp-*"))


def _can_unshare_net() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


BUILD = """
import sys, json
from pathlib import Path
from hil.errors import HilError
from hil.images import LinuxSpec, build_linux
spec = LinuxSpec(**json.loads(sys.argv[2]))
try:
    img = build_linux(spec, Path(sys.argv[1]))
    print(json.dumps({"cached": img.cached, "key": img.key}))
except HilError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def _build_in_a_netns(cache: Path, spec: LinuxSpec, path: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if path is not None:
        env["PATH"] = path
    spec_json = json.dumps({k: list(v) if isinstance(v, tuple) else v
                            for k, v in spec.__dict__.items()})  # fmt: skip
    p = subprocess.run([shutil.which("unshare"), "--net", sys.executable, "-c", BUILD, str(cache), spec_json],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _can_unshare_net(), reason="needs `unshare --net` (root)")
def test_cached_build_needs_no_network_and_no_apt(fio_image, linux_cache, tmp_path):
    img, _, _ = fio_image
    # No network namespace peers, and no apt-get/apt-cache/dpkg-deb on PATH.
    out = _build_in_a_netns(linux_cache, FIO_SPEC, path=str(tmp_path))
    assert out == {"cached": True, "key": img.key}


@pytest.mark.skipif(not _can_unshare_net(), reason="needs `unshare --net` (root)")
def test_first_build_without_network_is_an_infra_error(tmp_path):
    out = _build_in_a_netns(tmp_path / "empty-cache", LinuxSpec(packages=("fio",)))
    assert out["error"] == "InfraError", out
    assert "no network reachable" in out["message"] and "offline from the cache" in out["message"]
    assert not list((tmp_path / "empty-cache").glob(".tmp-*"))
