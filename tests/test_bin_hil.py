"""bin/hil and `hil test`: what a new user types first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def hil(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hil.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


@pytest.fixture
def two_tests(tmp_path) -> Path:
    p = tmp_path / "test_two.py"
    p.write_text("def test_first():\n    pass\n\n\ndef test_second():\n    pass\n")
    return p


def test_hil_test_passes_q_and_k_to_pytest(two_tests):
    r = hil("test", "-q", "-k", "second", "-p", "no:cacheprovider", str(two_tests))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unrecognized arguments" not in r.stderr
    assert "1 passed, 1 deselected" in r.stdout
    r = hil("test", str(two_tests), "-k", "first or second", "-q", "-p", "no:cacheprovider")
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout + r.stderr


def test_hil_test_without_a_path_runs_the_suite():
    r = hil("test", "--co", "-q", "-k", "test_hil_test_without_a_path_runs_the_suite")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_bin_hil.py::test_hil_test_without_a_path_runs_the_suite" in r.stdout


def test_pytest_help_is_pytests():
    r = hil("test", "--help")
    assert r.returncode == 0 and "-k EXPRESSION" in r.stdout


# ---------------------------------------------------------------- bin/hil set-up output

FAKE_APT = """\
#!/bin/sh
# Stands in for apt-get: as chatty as the real one, and it fails when told to.
i=0
while [ $i -lt 500 ]; do echo "Get:$i http://deb.example/ progress line $i"; i=$((i+1)); done
echo "apt-get $*" >> "$APT_CALLS"
[ -z "$APT_FAIL" ] || { echo "E: Unable to locate package nasm"; exit 100; }
"""


def _sandbox_path(tmp_path: Path) -> Path:
    """A PATH with what bin/hil itself needs, but no nasm: it must want a package."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tools = (
        "bash sh cat cut dirname grep id mktemp rm sha256sum ldconfig env "
        "qemu-system-x86_64 qemu-img gcc ld objcopy python3"
    ).split()
    for tool in tools:
        found = shutil.which(tool) or shutil.which(tool, path="/sbin:/usr/sbin")
        if found:
            (bindir / tool).symlink_to(found)
    apt = bindir / "apt-get"
    apt.write_text(FAKE_APT)
    apt.chmod(0o755)
    return bindir


@pytest.mark.skipif(os.geteuid() != 0, reason="bin/hil installs packages only as root")
@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "hil").exists(), reason="no .venv yet")
@pytest.mark.parametrize("fail", [False, True])
def test_bin_hil_shows_one_line_per_setup_step(tmp_path, fail):
    bindir = _sandbox_path(tmp_path)
    calls = tmp_path / "apt-calls"
    env = {
        "PATH": str(bindir),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "APT_CALLS": str(calls),
        "APT_FAIL": "1" if fail else "",
        "HIL_VENV": str(REPO / ".venv"),
    }
    r = subprocess.run(
        ["bash", str(REPO / "bin" / "hil"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "apt-get update" in calls.read_text()
    lines = r.stderr.splitlines()
    if not fail:
        assert r.returncode == 0, r.stderr
        assert "progress line" not in r.stderr
        setup = [ln for ln in lines if ln.startswith("bin/hil: ")]
        assert "bin/hil: updating the package lists (apt-get update)" in setup
        assert any(ln.startswith("bin/hil: installing Debian packages: nasm") for ln in setup)
        assert len(lines) <= 4, textwrap.indent(r.stderr, "  ")
    else:
        assert r.returncode == 3, r.stderr
        assert "(apt-get update) failed (exit 100); its output:" in r.stderr
        assert "progress line 499" in r.stderr and "Unable to locate package" in r.stderr
    assert not list(tmp_path.glob(".hil-setup-log.*")), "the set-up log was left behind"
