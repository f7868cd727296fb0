"""A SIGKILLed hil leaves claimed directories; the next start removes exactly those of dead
owners (hil/janitor.py).  The owner here is a real process, really SIGKILLed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hil import janitor, results
from hil.janitor import OWNER_FILE, cleanup_stale

REPO = Path(__file__).resolve().parent.parent

# What a hil run holds open when it is killed: a socket directory, a run directory with
# its per-run disks and no run.json yet, and an image build in progress (gcc is slow).
CHILD = """
import os, sys, time
from pathlib import Path
from hil import image, janitor, results
tmp, res, cache = map(Path, sys.argv[1:4])
sock = janitor.owned_tempdir(dir=str(tmp))
(Path(sock) / "qmp.sock").write_text("")
run_id, run_dir = results.new_run_dir(res, "boot")
for name in ("nvme0.qcow2", "usb0-storage.img", "serial.log"):
    (run_dir / name).write_text("x")
print("ready", flush=True)
image.build(image.ImageRecipe(), cache_root=cache)
"""

SLOW_GCC = """#!/bin/sh
case "$*" in *--version*) exec {gcc} "$@";; esac
echo compiling > "$GCC_STARTED"
sleep 120
"""


def _kill_a_running_hil(tmp_path: Path) -> dict[str, Path]:
    tmp, res, cache, bindir = (tmp_path / n for n in ("tmp", "results", "cache", "bin"))
    for d in (tmp, res, cache, bindir):
        d.mkdir()
    gcc = bindir / "gcc"
    gcc.write_text(SLOW_GCC.format(gcc=shutil.which("gcc")))
    gcc.chmod(0o755)
    started = tmp_path / "gcc-started"
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp), str(res), str(cache)],
        cwd=REPO,
        env={
            **os.environ,
            "PATH": f"{bindir}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
            "GCC_STARTED": str(started),
        },
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert p.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline and p.poll() is None, "the build never started"
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the whole group, as systemd does
        p.wait(10)
    return {"tmp": tmp, "results": res, "cache": cache}


def test_what_a_sigkilled_hil_left_is_removed_and_nothing_else(tmp_path):
    where = _kill_a_running_hil(tmp_path)
    (sock,) = where["tmp"].glob("hil-*")
    (run_dir,) = where["results"].glob("boot/*")
    (work,) = where["cache"].glob(".tmp-*")
    # Beside them, what must stay: a live owner's directory, an unowned one, a finished
    # run, and a symlink to a stale directory (never followed).
    live = Path(janitor.owned_tempdir(dir=str(where["tmp"])))
    unowned = where["tmp"] / "hil-unowned"
    unowned.mkdir()
    _, finished = results.new_run_dir(where["results"], "boot")
    (finished / "nvme0.img").write_text("kept")
    results.write_json(finished / "run.json", {"verdict": "pass"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(sock / OWNER_FILE, elsewhere / OWNER_FILE)
    (where["tmp"] / "hil-link").symlink_to(elsewhere)

    removed = cleanup_stale(where["results"], where["cache"], where["tmp"])

    assert not sock.exists() and not work.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["serial.log"]
    assert live.exists() and unowned.exists() and (elsewhere / OWNER_FILE).exists()
    assert (finished / "nvme0.img").exists() and not (finished / OWNER_FILE).exists()
    assert len(removed) == 4, removed
    assert any("socket directory" in r for r in removed)
    assert any("half-built image" in r for r in removed)
    # Once cleaned, nothing more to do.
    assert cleanup_stale(where["results"], where["cache"], where["tmp"]) == []
    shutil.rmtree(live)


def test_a_reused_pid_is_not_the_owner(tmp_path):
    d = tmp_path / "hil-x"
    d.mkdir()
    mine = janitor.me()
    # This process's pid, but another start time: the creator died and its pid was reused.
    fake = janitor.Owner(mine.pid, mine.start + 1, mine.boot, mine.host)
    (d / OWNER_FILE).write_text(fake.to_json())
    assert janitor.is_stale(d)
    janitor.claim(d)
    assert not janitor.is_stale(d)


@pytest.mark.parametrize(
    "change, stale",
    [({"boot": "another-boot"}, True), ({"host": "another-host"}, False), ({}, False)],
)
def test_boot_and_host(tmp_path, change, stale):
    d = tmp_path / "hil-x"
    d.mkdir()
    data = {**json.loads(janitor.me().to_json()), **change}
    (d / OWNER_FILE).write_text(json.dumps(data))
    assert janitor.is_stale(d) is stale


def test_a_garbled_owner_file_is_left_alone(tmp_path):
    d = tmp_path / "hil-x"
    d.mkdir()
    (d / OWNER_FILE).write_text("{not json")
    assert not janitor.is_stale(d)
    assert cleanup_stale(tmp_path / "r", tmp_path / "c", tmp_path) == [] and d.exists()


def test_hil_start_cleans_up_and_says_so(tmp_path):
    where = _kill_a_running_hil(tmp_path)
    script = textwrap.dedent(
        f"""
        import tempfile
        from pathlib import Path
        tempfile.tempdir = {str(where["tmp"])!r}
        from hil import janitor
        janitor.at_start(Path({str(where["results"])!r}))
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PXOS_HIL_CACHE": str(where["cache"])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "hil: removed 4 leftover(s) of hil processes that were killed" in p.stderr, p.stderr
    assert not list(where["tmp"].iterdir()) and not list(where["cache"].glob(".tmp-*"))
