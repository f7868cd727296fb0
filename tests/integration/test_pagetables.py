"""The PVH entry's identity map, as the CPU sees it (QEMU's `info tlb`).

boot/longmode.inc maps the first 4 GiB with 2 MiB pages, four entries per iteration, in
two runs (the top GiB, MMIO only, uncached), nothing above 4 GiB; the PVH entry relies on
QEMU's loader having zeroed the tables, the boot sector zeroes its own.  The kernel must
reach `ready` (it touches the ECAM window and the local APIC on the way) and the page
tables must be exactly the expected ones, as the CPU sees them.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from hil import host, image
from hil.qmp import QmpDriver

pytestmark = pytest.mark.integration

GIB = 1 << 30


def boot_and_dump_tlb(elf: Path, cpu: str, tmp: Path) -> list[tuple[int, str]]:
    """Boot the kernel ELF (PVH, TCG) with `-cpu cpu` until `@stage ready`; then the
    mappings `info tlb` lists: (virtual address, flags)."""
    serial, sock = tmp / "serial.txt", tmp / "qmp.sock"
    argv = [
        host.which(host.QEMU),
        "-machine",
        "q35,accel=tcg,acpi=off",
        "-cpu",
        cpu,
        "-m",
        "128",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        f"file:{serial}",
        "-bios",
        str(host.QBOOT),
        "-kernel",
        str(elf),
        "-qmp",
        f"unix:{sock}",
    ]
    with QmpDriver("pagetables") as qmp:
        qmp.listen(str(sock))
        qmp.accept_async()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            qmp.wait_connected(30)
            deadline = time.monotonic() + 60
            while b"@stage ready" not in (serial.read_bytes() if serial.exists() else b""):
                assert proc.poll() is None, f"QEMU exited: {serial.read_text()}"
                assert time.monotonic() < deadline, f"no ready line: {serial.read_text()}"
                time.sleep(0.05)
            text = qmp.cmd("human-monitor-command", **{"command-line": "info tlb"})
        finally:
            proc.kill()
            proc.wait()
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([0-9a-f]+): [0-9a-f]+ (\S+)", line)
        if m:
            rows.append((int(m.group(1), 16), m.group(2)))
    return rows


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> Path:
    return image.build(image.ImageRecipe(), cache_root=tmp_path_factory.mktemp("cache")).elf


def test_identity_map_of_4_gib(kernel, tmp_path):
    rows = boot_and_dump_tlb(kernel, "qemu64", tmp_path)
    assert [va for va, _ in rows] == list(range(0, 4 * GIB, 2 << 20)), rows[:8]
    for va, flags in rows:
        # QEMU's flags: C = cache disable (PCD), T = write-through (PWT), P = large page
        assert "P" in flags and "W" in flags, (hex(va), flags)
        uncached = "C" in flags and "T" in flags
        assert uncached == (va >= 3 * GIB), (hex(va), flags)


def test_bios_path_maps_4_gib_and_nothing_above(hil, tmp_path):
    """The boot sector runs the same macro (with zero = 1, over low memory SeaBIOS used):
    the kernel reaches ready through the ECAM window and the APIC in the top GiB, and the
    first byte above 4 GiB faults."""
    cpu = "qemu64"
    profile = tmp_path / "bios-cpu.yaml"
    profile.write_text(
        "description: q35-tcg-bios with a chosen CPU\nmachine: q35\naccel: tcg\nboot: bios\n"
        f"memory: 128\ncpus: 1\ncpu: '{cpu}'\n"
    )
    sc = hil.scenario(
        f"profile: {profile}\n"
        "steps:\n  - expect: '@stage ready'\n    timeout: 30\n"
        "  - send: pf\n  - expect: never\n    timeout: 10\n"
    )
    r = hil("run", str(sc))
    argv = r.run["qemu"]["argv"]
    assert argv[argv.index("-cpu") + 1] == cpu  # the profile's CPU really ran
    v = r.run["verdict"]
    assert v["category"] == "guest-exception" and "vector 14 " in v["reason"], r.out + r.err
    exc = next(e for e in v["evidence"] if "!EXC" in e)
    assert int(exc.split("cr2=")[1].split()[0], 16) == 1 << 32
