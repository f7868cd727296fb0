"""Fixtures for tests that boot the real image in QEMU (TCG, so they run anywhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory) -> Path:
    """One image cache for the session: the first run builds, the rest hit the cache."""
    return tmp_path_factory.mktemp("image-cache")


@dataclass
class HilResult:
    code: int
    out: str
    err: str
    run_dirs: list[Path]
    tmpdir: Path

    @property
    def run(self) -> dict:
        """run.json of the (only) run."""
        assert len(self.run_dirs) == 1, self.run_dirs
        return json.loads((self.run_dirs[0] / "run.json").read_text())


class Hil:
    """Runs `hil` as a user would (a subprocess), in a sandbox of its own."""

    def __init__(self, tmp_path: Path, cache: Path):
        self.tmp_path = tmp_path
        self.results = tmp_path / "results"
        self.tmpdir = tmp_path / "tmp"  # TMPDIR: sockets and temp files must not stay
        self.tmpdir.mkdir()
        self.env = {
            **os.environ,
            "PXOS_HIL_CACHE": str(cache),
            "TMPDIR": str(self.tmpdir),
            "PYTHONPATH": str(REPO),
            "CI": "",
        }

    def scenario(self, body: str, name: str | None = None) -> Path:
        """Write a scenario with a unique name (so its QEMU can be found by name)."""
        name = name or f"it-{uuid.uuid4().hex[:8]}"
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\n" + textwrap.dedent(body))
        return path

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hil.cli", *args]

    def spawn(self, *args: str, quiet_output: bool = False) -> subprocess.Popen:
        """`hil run ARGS` in the background (for tests that interrupt it)."""
        out = subprocess.DEVNULL if quiet_output else subprocess.PIPE
        return subprocess.Popen(
            self.cmd("run", *map(str, args), "--results", str(self.results)),
            cwd=REPO,
            env=self.env,
            stdout=out,
            stderr=out,
            text=True,
        )

    def __call__(self, *args: str, env: dict | None = None, timeout: float = 240) -> HilResult:
        before = set(self.results.glob("*/*")) if self.results.exists() else set()
        p = subprocess.run(
            self.cmd(*args, "--results", str(self.results))
            if args[0] == "run"
            else self.cmd(*args),
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env or self.env,
            timeout=timeout,
        )
        after = set(self.results.glob("*/*")) if self.results.exists() else set()
        return HilResult(p.returncode, p.stdout, p.stderr, sorted(after - before), self.tmpdir)


@pytest.fixture
def hil(tmp_path, image_cache) -> Hil:
    h = Hil(tmp_path, image_cache)
    yield h
    assert_no_leftovers(h)


def qemu_processes(match: str = "pxos-it-") -> list[str]:
    p = subprocess.run(["pgrep", "-a", "-f", match], capture_output=True, text=True)
    return [ln for ln in p.stdout.splitlines() if "pgrep" not in ln]


def assert_no_leftovers(h: Hil) -> None:
    names = [p.stem for p in h.tmp_path.glob("it-*.yaml")]
    for name in names:
        assert not qemu_processes(f"pxos-{name},"), f"QEMU of {name} still running"
    left = list(h.tmpdir.iterdir())
    assert not left, f"left behind in TMPDIR: {left}"
