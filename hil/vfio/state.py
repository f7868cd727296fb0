"""State files: what a device looked like before hil bound it, and which hil holds it.

A state file is written *before* anything about the device changes, in two places:
the run directory (the run's record) and a host-wide registry directory (default
/run/pxos-hil/vfio/, a tmpfs that a reboot empties together with every binding).
The registry file doubles as the lock: it is created atomically (link(2) of a
finished temporary file), so two hil runs can never both think they hold a device.

The owner is a pid plus that process's start time and the boot id, so a pid that the
kernel has since given to another process is not mistaken for the owner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import InfraError
from .bdf import Bdf
from .host import valid_driver_name

DEFAULT_REGISTRY = Path("/run/pxos-hil/vfio")
STATE_VERSION = 1


class StateError(InfraError):
    """A state file that cannot be read or does not make sense."""


@dataclass(frozen=True)
class Owner:
    pid: int
    start_time: int  # clock ticks after boot (/proc/PID/stat field 22)
    boot_id: str


class Processes:
    """Which processes are alive, from /proc (the real one: owners are real processes)."""

    def __init__(self, proc: str | Path = "/proc"):
        self.proc = Path(proc)

    def boot_id(self) -> str:
        try:
            return (self.proc / "sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return ""

    def owner(self, pid: int) -> Owner | None:
        """The process ``pid`` as an owner, or None when there is no such live process."""
        try:
            stat = (self.proc / str(pid) / "stat").read_text()
        except OSError:
            return None
        # comm (field 2) is in parentheses and may hold spaces or ')': split after the last.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie has already died
            return None
        try:
            return Owner(pid, int(fields[19]), self.boot_id())
        except ValueError:
            return None

    def me(self) -> Owner:
        owner = self.owner(os.getpid())
        if owner is None:
            raise InfraError(f"cannot read {self.proc}/{os.getpid()}/stat: is /proc mounted?")
        return owner

    def alive(self, owner: Owner) -> bool:
        return self.owner(owner.pid) == owner


@dataclass(frozen=True)
class Record:
    """One device's state file."""

    bdf: Bdf
    driver: str | None  # the driver it was bound to, None for none
    override: str | None  # its driver_override, None for unset
    owner: Owner
    time: float  # when hil took it (Unix time)
    run_dir: str  # where the run's copy lives ("" for none)
    restored: float | None = None  # set in the run's copy once restored

    def to_json(self) -> str:
        d = asdict(self)
        d["bdf"] = str(self.bdf)
        return json.dumps({"version": STATE_VERSION, **d}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> Record:
        try:
            d = json.loads(text)
            if d.get("version") != STATE_VERSION:
                raise ValueError(f"version {d.get('version')!r}, this hil reads {STATE_VERSION}")
            bdf = Bdf.parse(d["bdf"])
            o = d["owner"]
            owner = Owner(int(o["pid"]), int(o["start_time"]), str(o["boot_id"]))
            record = cls(
                bdf=bdf,
                driver=d["driver"],
                override=d["override"],
                owner=owner,
                time=float(d["time"]),
                run_dir=str(d["run_dir"]),
                restored=None if d.get("restored") is None else float(d["restored"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StateError(f"{source}: not a hil vfio state file ({e})") from None
        # Driver names go into sysfs paths: only plain names, never ../ or /.
        for name, value in (("driver", record.driver), ("override", record.override)):
            if value is not None and not valid_driver_name(value):
                raise StateError(f"{source}: {name} {value!r} is not a driver name")
        if bdf is None or source.stem != str(bdf):
            raise StateError(f"{source}: names device {d.get('bdf')!r}, not {source.stem}")
        return record

    def restored_copy(self) -> Record:
        return replace(self, restored=time.time())


def _write_atomic(path: Path, text: str, *, exclusive: bool) -> None:
    """Write ``text`` to ``path`` complete or not at all; ``exclusive``: fail if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)  # any hil may read who holds a device
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # atomic, and EEXIST when another hil got there first
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Registry:
    """The host-wide directory of state files, one per device held by some hil."""

    def __init__(self, root: str | Path = DEFAULT_REGISTRY):
        self.root = Path(root)

    def path(self, bdf: Bdf) -> Path:
        return self.root / f"{bdf}.json"

    def claim(self, record: Record) -> None:
        """Create the device's state file; FileExistsError when one is already there."""
        try:
            _write_atomic(self.path(record.bdf), record.to_json(), exclusive=True)
        except FileExistsError:
            raise
        except OSError as e:
            raise InfraError(
                f"cannot write the vfio state file {self.path(record.bdf)}: {e.strerror}."
                " hil must record a device's driver before it rebinds it; run hil as root"
                " or point the registry at a writable directory."
            ) from None

    def read(self, bdf: Bdf) -> Record | None:
        path = self.path(bdf)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read {path}: {e.strerror}") from None
        return Record.from_json(text, path)

    def entries(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StateError(f"cannot list the vfio registry {self.root}: {e.strerror}") from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the registry while devices are claimed, taken over or restored.

        Two hil runs finding the same dead owner's file must not both restore it and
        then both claim it; flock is dropped by the kernel if its holder dies.
        """
        lock = self.root / ".lock"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            # Another user's registry: flock needs only a read-only descriptor, so a
            # non-root hil can still look (and leave live runs' devices alone).
            fd = self._open_readonly(lock)
        except OSError as e:
            raise InfraError(
                f"cannot use the vfio registry {self.root}: {e.strerror}. Run hil as root"
                " or point the registry at a writable directory."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open_readonly(self, lock: Path) -> int:
        try:
            return os.open(lock, os.O_RDONLY)
        except OSError as e:
            raise InfraError(
                f"cannot use the vfio registry {self.root}: {e.strerror}. Run hil as root"
                " or point the registry at a writable directory."
            ) from None

    def release(self, bdf: Bdf) -> None:
        self.path(bdf).unlink(missing_ok=True)


def run_copy_path(run_dir: str | Path, bdf: Bdf) -> Path:
    return Path(run_dir) / "vfio" / f"{bdf}.json"


def write_run_copy(record: Record) -> None:
    """The run directory's copy (best effort once restored: the run dir may be gone)."""
    if record.run_dir:
        _write_atomic(run_copy_path(record.run_dir, record.bdf), record.to_json(), exclusive=False)
