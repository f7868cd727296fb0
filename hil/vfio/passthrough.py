"""A run's passed-through devices: preflight, claim, bind; and the restore that always follows.

    with Passthrough(bdfs, run_dir=run_dir) as p:   # preflight + state files + bind
        qemu(..., *p.qemu_args())                   # the guest runs
    # restored here: after the run, an exception, Ctrl-C, a QEMU crash

A SIGKILL of hil skips ``__exit__``; the state files stay in the registry and the next
hil (at start, or ``hil vfio restore``) calls :func:`restore_stale`, which restores
every device whose owner process is dead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import HilError, InfraError
from .bdf import Bdf, qemu_args
from .bind import SETTLE_S, Binder, BindError, Restored, RestoreError
from .checks import Preflight, Runner, run_command
from .host import PciHost
from .state import (
    DEFAULT_REGISTRY,
    Owner,
    Processes,
    Record,
    Registry,
    StateError,
    run_copy_path,
    write_run_copy,
)
from .sysfs import Sysfs

_DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# (pid, bdf) of the devices this process's Passthroughs hold; the pid keeps a forked
# child (hil run -j) from taking its parent's entries for its own.
_HELD: set[tuple[int, Bdf]] = set()
_HELD_LOCK = threading.Lock()


class DeviceBusy(InfraError):
    """Another live hil run holds the device (exit 3; nothing changed)."""


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM/SIGHUP until a bind or restore is complete.

    A signal in the middle of the driver dance would leave the device half-moved;
    deferred, it is raised again as soon as the block ends and the usual path (restore)
    runs.  The Python handlers are swapped rather than the signal mask: any thread may
    receive a process-directed signal, but its handler always runs in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {}
    for sig in _DEFERRED:
        handler = signal.getsignal(sig)
        if handler is None:  # installed outside Python: cannot be put back, leave it
            continue
        old[sig] = handler
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


class Passthrough:
    """Context manager owning a run's passed-through devices from preflight to restore."""

    def __init__(
        self,
        devices: Sequence[Bdf],
        *,
        run_dir: str | Path,
        registry: str | Path = DEFAULT_REGISTRY,
        sysfs: Sysfs | None = None,
        allow_noiommu: bool = False,
        runner: Runner = run_command,
        procs: Processes | None = None,
        where: str = "passthrough",
        settle_s: float = SETTLE_S,
    ):
        self.devices = list(devices)
        self.run_dir = Path(run_dir)
        self.registry = Registry(registry)
        self.fs = sysfs or Sysfs("/")
        self.host = PciHost(self.fs)
        self.preflight = Preflight(self.fs, allow_noiommu=allow_noiommu, runner=runner)
        self.binder = Binder(self.fs, settle_s)
        self.procs = procs or Processes()
        self.where = where
        self.held: list[Record] = []  # claimed by us, in claim order
        self.restored: list[Restored] = []

    # --- entering ----------------------------------------------------------------------
    def __enter__(self) -> Passthrough:
        self.preflight.run(self.devices, self.where)
        self._claim_all()
        try:
            self._write_run_copies()
            with signals_deferred():
                for record in self.held:
                    self.binder.bind_vfio(record.bdf)
            problems = [
                f"passthrough {b}: {p.reason}. Fix: {p.fix}."
                for b in self.devices
                for p in self.preflight.node_problems(b)
            ]
            if problems:
                raise BindError(" ".join(problems))
        except BaseException as e:
            try:
                self._restore_all()
            except RestoreError as r:
                # The device is not back: that, and what to run by hand, is the news.
                raise RestoreError(f"{e} {r}" if isinstance(e, HilError) else str(r)) from e
            raise
        return self

    def _claim_all(self) -> None:
        with self.registry.locked():
            self._refuse_busy_groups()
            self._claim_each(self.procs.me())

    def _refuse_busy_groups(self) -> None:
        """A group member held by another live hil: its QEMU has the group open."""
        for bdf in self.devices:
            group = self.host.group(bdf)
            members = [] if group is None else self.host.group_members(group)
            for member in members:
                if member in self.devices:
                    continue
                other = self.registry.read(member)
                if other is not None and self._in_use(other):
                    raise DeviceBusy(
                        f"{self.where}: {bdf} shares IOMMU group {group} with {member}, which"
                        f" another hil run holds (pid {other.owner.pid}, run directory"
                        f" {other.run_dir or '?'}); a group goes to one guest at a time. Wait"
                        " for that run to finish; nothing on the host was changed."
                    )

    def _claim_each(self, me: Owner) -> None:
        for bdf in self.devices:
            record = Record(
                bdf=bdf,
                driver=self.host.driver(bdf),
                override=self.host.override(bdf),
                owner=me,
                time=time.time(),
                run_dir=str(self.run_dir),
            )
            try:
                self._claim(record)
            except BaseException:
                for held in self.held:  # nothing is bound yet: dropping the claims is all
                    self.registry.release(held.bdf)
                    with _HELD_LOCK:
                        _HELD.discard((os.getpid(), held.bdf))
                self.held.clear()
                raise

    def _write_run_copies(self) -> None:
        for record in self.held:
            try:
                write_run_copy(record)
            except OSError as e:
                raise InfraError(
                    f"cannot write {run_copy_path(record.run_dir, record.bdf)}: {e.strerror}"
                ) from None

    def _claim(self, record: Record) -> None:
        try:
            self.registry.claim(record)
        except FileExistsError:
            other = self.registry.read(record.bdf)
            if other is not None and self._in_use(other):
                raise DeviceBusy(
                    f"{self.where}: {record.bdf} is in use by another hil run (pid"
                    f" {other.owner.pid}, run directory {other.run_dir or '?'}, since"
                    f" {time.strftime('%H:%M:%S', time.localtime(other.time))}). Wait for it"
                    f" to finish or pass another device; nothing on the host was changed."
                ) from None
            if other is not None:  # a dead owner's device: give it back, then take it
                with signals_deferred():
                    self.binder.restore(other, str(self.registry.path(record.bdf)))
                self.registry.release(record.bdf)
            else:
                self.registry.release(record.bdf)
            # The device may have moved back: record what it is *now*.
            record = replace(
                record, driver=self.host.driver(record.bdf), override=self.host.override(record.bdf)
            )
            self.registry.claim(record)
        self.held.append(record)
        with _HELD_LOCK:
            _HELD.add((os.getpid(), record.bdf))

    def _in_use(self, other: Record) -> bool:
        """Whether ``other``'s owner still holds the device.

        A state file of this very process that no Passthrough of it holds is a leftover
        of an earlier run whose restore failed (a batch runs many in one process).
        """
        if not self.procs.alive(other.owner):
            return False
        if other.owner.pid != os.getpid():
            return True
        with _HELD_LOCK:
            return (os.getpid(), other.bdf) in _HELD

    # --- using -------------------------------------------------------------------------
    def qemu_args(self, rom: dict[Bdf, bool] | None = None) -> list[str]:
        """``-device vfio-pci,host=...`` for each device (``rom[bdf]=False``: rombar=0)."""
        out: list[str] = []
        for bdf in self.devices:
            out += qemu_args(bdf, rom=(rom or {}).get(bdf, True))
        return out

    def group_nodes(self) -> list[Path]:
        """The /dev/vfio group nodes QEMU will open (for a sandbox or a log)."""
        nodes = []
        for bdf in self.devices:
            group = self.host.group(bdf)
            node = None if group is None else self.host.group_node(group)
            if node is not None and self.fs.path(node) not in nodes:
                nodes.append(self.fs.path(node))
        return nodes

    # --- leaving -----------------------------------------------------------------------
    def __exit__(self, *exc: object) -> None:
        self._restore_all()

    def _restore_all(self) -> None:
        """Restore every held device (reverse order); one RestoreError for all failures.

        A device that could not be restored keeps its state file, so that a later hil
        (restore_stale) can retry it once the cause is fixed.
        """
        errors = []
        with signals_deferred():
            for record in reversed(self.held):
                path = str(self.registry.path(record.bdf))
                try:
                    self.restored.append(self.binder.restore(record, path))
                    _finish(self.registry, record)
                except RestoreError as e:
                    errors.append(str(e))  # its state file stays for restore_stale
                finally:
                    with _HELD_LOCK:
                        _HELD.discard((os.getpid(), record.bdf))
        self.held = []
        if errors:
            raise RestoreError(" ".join(errors))


def _finish(registry: Registry, record: Record) -> None:
    """A restored device: mark the run's copy, then drop the lock."""
    with contextlib.suppress(OSError):  # the run directory may be gone by now
        write_run_copy(record.restored_copy())
    registry.release(record.bdf)


def restore_stale(
    registry: str | Path = DEFAULT_REGISTRY,
    *,
    sysfs: Sysfs | None = None,
    procs: Processes | None = None,
) -> list[str]:
    """Restore every device whose state file's owner is dead; one line per device restored.

    Entries of live hil runs are left alone.  Raises RestoreError (listing what to run
    by hand) after trying every entry when any could not be restored or read.
    """
    reg = Registry(registry)
    if not reg.entries():  # the common case: nothing to do, and no lock to take
        return []
    procs = procs or Processes()
    binder = Binder(sysfs or Sysfs("/"))
    with reg.locked():
        done, errors = _restore_dead(reg, procs, binder)
    if errors:
        err = RestoreError(" ".join(errors))
        err.restored = done  # type: ignore[attr-defined]
        raise err
    return done


def _restore_dead(reg: Registry, procs: Processes, binder: Binder) -> tuple[list[str], list[str]]:
    done, errors = [], []
    for path in reg.entries():
        bdf = Bdf.parse(path.stem)
        try:
            record = reg.read(bdf) if bdf is not None else None
            if record is None:
                raise StateError(f"{path}: not named after a PCI address")
        except StateError as e:
            errors.append(f"{e} Inspect it and delete it by hand.")
            continue
        if procs.alive(record.owner):
            continue
        try:
            with signals_deferred():
                restored = binder.restore(record, str(path))
        except RestoreError as e:
            errors.append(str(e))
            continue
        _finish(reg, record)
        done.append(f"{restored.message} (left by hil pid {record.owner.pid}, no longer running)")
    return done, errors
