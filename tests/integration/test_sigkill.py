"""SIGKILL of hil's whole process group (systemd after TimeoutStartSec): nothing of it may
outlive the next hil start -- the socket directories, the per-run disk overlay of the run
that never finished (its logs stay), no QEMU (setpriv's parent-death signal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hil import janitor, machine
from hil.vgpu import driver

from .conftest import qemu_processes

CLAIMS = "owned_tempdir" in Path(machine.__file__).read_text() + Path(driver.__file__).read_text()


@pytest.mark.skipif(
    not CLAIMS,
    reason="needs hil/machine.py and hil/vgpu/driver.py to make their socket directories "
    "with janitor.owned_tempdir() (a one-line change in each)",
)
def test_the_next_hil_start_cleans_up_after_a_sigkilled_one(hil, tmp_path):
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(1 << 20)
    sc = hil.scenario(f"""\
profile: q35-tcg-bios
devices:
  - nvme: {{file: {disk}}}
steps:
  - expect: '@stage ready'
    timeout: 60
  - idle: 60
""")
    p = subprocess.Popen(
        hil.cmd("run", str(sc), "--results", str(hil.results)),
        env=hil.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not qemu_processes(f"pxos-{sc.stem},"):
        assert time.monotonic() < deadline and p.poll() is None, "QEMU never started"
        time.sleep(0.1)
    time.sleep(1.0)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)
    (run_dir,) = (hil.results / sc.stem).iterdir()
    assert json.loads((run_dir / "run.json").read_text()).get("verdict") is None
    assert list(run_dir.glob("*.qcow2")), "the killed run had no overlay to leave"
    assert list(hil.tmpdir.glob("hil-*")), "the killed run left no socket directory"
    deadline = time.monotonic() + 10
    while qemu_processes(f"pxos-{sc.stem},"):  # the parent-death signal ends QEMU
        assert time.monotonic() < deadline, "QEMU outlived the SIGKILLed hil"
        time.sleep(0.1)

    # The next hil start (any `hil run`; this one's scenario is invalid and runs nothing).
    bad = hil.scenario("profile: q35-tcg-bios\nsteps: []\n")
    r = hil("run", str(bad))
    assert r.code == 2
    assert "leftover(s) of hil processes that were killed" in r.err, r.err
    assert not list(hil.tmpdir.iterdir())
    assert not list(run_dir.glob("*.qcow2")) and (run_dir / "serial.log").exists()
    assert not (run_dir / janitor.OWNER_FILE).exists()
