"""What a killed hil leaves behind, and cleaning it up at the next start.

hil's context managers remove every temporary directory on any exception, Ctrl-C and
SIGTERM.  A SIGKILL of the whole process group (systemd after ``TimeoutStartSec``, the
OOM killer) runs no code at all, so what was open stays: the QMP and ivshmem socket
directories (``$TMPDIR/hil-*``), a run directory's per-run disks (its run.json is never
written), a half-built image cache directory (``<cache>/.tmp-<key>-*``).

Every such directory is *claimed* by its creator: an owner file holding the creating
process's pid, that process's start time (so a pid reused by another process is not
mistaken for the owner), the boot id (a reboot ends every owner) and the hostname (a
directory on a shared filesystem made by another host is never judged).  The next hil
start calls cleanup_stale(), which removes only what a dead owner claimed; a directory
without an owner file, or owned by a live process, is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

OWNER_FILE = ".hil-owner"
TMP_PREFIX = "hil-"  # $TMPDIR/hil-* (QEMU's QMP socket, hil-vgpu-* the ivshmem socket)
CACHE_TMP_PREFIX = ".tmp-"  # <image cache>/.tmp-<key>-* (hil.image.build's work dir)
RUN_DISK_SUFFIXES = (".img", ".qcow2")  # per-run disks in a run directory (hil.devices)


@dataclass(frozen=True)
class Owner:
    pid: int
    start: int  # clock ticks after boot (/proc/<pid>/stat field 22)
    boot: str
    host: str

    def to_json(self) -> str:
        return json.dumps(
            {"pid": self.pid, "start": self.start, "boot": self.boot, "host": self.host}
        )


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), or None when there is no such
    process.  The command name in field 2 may hold spaces and ')': split after the last."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def me() -> Owner:
    pid = os.getpid()
    return Owner(pid, _start_time(pid) or 0, _boot_id(), socket.gethostname())


def claim(directory: Path | str) -> None:
    """Mark ``directory`` as this process's: call right after creating it."""
    path = Path(directory) / OWNER_FILE
    path.write_text(me().to_json() + "\n")


def release(directory: Path | str) -> None:
    """Drop the claim (before handing the directory on, e.g. renaming it into place)."""
    (Path(directory) / OWNER_FILE).unlink(missing_ok=True)


def owned_tempdir(prefix: str = TMP_PREFIX, dir: str | None = None) -> str:
    """tempfile.mkdtemp, claimed: for every temporary directory hil itself removes."""
    path = tempfile.mkdtemp(prefix=prefix, dir=dir)
    claim(path)
    return path


def read_owner(directory: Path) -> Owner | None:
    try:
        data = json.loads((directory / OWNER_FILE).read_text())
        return Owner(int(data["pid"]), int(data["start"]), str(data["boot"]), str(data["host"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_stale(directory: Path) -> bool:
    """True only when ``directory`` was claimed on this host, in this boot or an
    earlier one, by a process that no longer runs."""
    owner = read_owner(directory)
    if owner is None or owner.host != socket.gethostname():
        return False
    if owner.boot != _boot_id():
        return True
    return _start_time(owner.pid) != owner.start


def cleanup_stale(results_root: Path, cache_root: Path, tmpdir: Path) -> list[str]:
    """Remove what dead hil processes left; returns a line per thing removed."""
    removed: list[str] = []
    for d in _dirs(Path(tmpdir), TMP_PREFIX):
        if is_stale(d):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"{d} (socket directory)")
    for d in _dirs(Path(cache_root), CACHE_TMP_PREFIX):
        if is_stale(d):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"{d} (half-built image)")
    root = Path(results_root)
    for d in _dirs(root, "", depth=2):
        if (d / "run.json").exists() or not is_stale(d):
            continue
        # The run's logs stay (they show how far it got); its disks are the bulk.
        for f in d.iterdir():
            if f.suffix in RUN_DISK_SUFFIXES and f.is_file() and not f.is_symlink():
                f.unlink(missing_ok=True)
                removed.append(f"{f} (disk of a run that never finished)")
        release(d)
    return removed


def _dirs(root: Path, prefix: str, depth: int = 1) -> list[Path]:
    """Real directories (no symlinks) ``depth`` levels below root whose name starts
    with prefix."""
    level = [root]
    for _ in range(depth):
        nxt = []
        for parent in level:
            try:
                entries = list(os.scandir(parent))
            except OSError:
                continue
            nxt += [
                Path(e.path)
                for e in entries
                if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)
            ]
        level = nxt
    return level


def at_start(results_root: Path | None) -> list[str]:
    """hil's start-up call: clean the default places, say what went (stderr)."""
    from .image import _cache_root
    from .results import DEFAULT_ROOT

    try:
        removed = cleanup_stale(
            Path(results_root or DEFAULT_ROOT), _cache_root(None), Path(tempfile.gettempdir())
        )
    except OSError as e:  # never a reason not to start
        print(f"hil: could not clean up after killed runs: {e}", file=sys.stderr)
        return []
    if removed:
        print(
            f"hil: removed {len(removed)} leftover(s) of hil processes that were killed: "
            + "; ".join(removed[:5])
            + (" ..." if len(removed) > 5 else ""),
            file=sys.stderr,
        )
    return removed
