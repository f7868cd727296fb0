"""Moving one PCI function to vfio-pci and back, the way libvirt does it.

Bind: driver_override := vfio-pci, unbind from the current driver, drivers_probe,
then check it ended on vfio-pci.  The override (rather than vfio-pci's new_id) makes
the kernel match that one function only, never its twins on the same host.

Restore converges from whatever state the device is in (a bind interrupted half-way
included) to the recorded one: override back, unbind from vfio-pci, the original
driver's bind file (or a reprobe), check.  It is safe to run twice.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass

from ..errors import InfraError
from . import sysfs as fs
from .bdf import Bdf
from .host import PciHost
from .state import Record
from .sysfs import Sysfs

SETTLE_S = 10.0  # how long a probe may take to show in sysfs (async probing drivers)
_POLL_S = 0.02


class BindError(InfraError):
    """A device would not move to vfio-pci."""


class RestoreError(InfraError):
    """A device could not be given back to its driver; the message says what to run."""


@dataclass(frozen=True)
class Restored:
    bdf: Bdf
    message: str  # "0000:01:00.0 back on nvme"


def _oserror(e: OSError) -> str:
    return e.strerror or errno.errorcode.get(e.errno or 0, str(e))


class Binder:
    """The driver dance on one host (through one Sysfs)."""

    def __init__(self, sysfs: Sysfs, settle_s: float = SETTLE_S):
        self.fs = sysfs
        self.host = PciHost(sysfs)
        self.settle_s = settle_s

    # --- bind --------------------------------------------------------------------------
    def bind_vfio(self, bdf: Bdf) -> None:
        """Move ``bdf`` to vfio-pci (its state file must already be written)."""
        driver = self.host.driver(bdf)
        if driver == fs.VFIO_DRIVER:
            return
        steps = [(fs.device(bdf, "driver_override"), fs.VFIO_DRIVER)]
        if driver is not None:
            steps.append((fs.driver_file(driver, "unbind"), str(bdf)))
        steps.append((fs.DRIVERS_PROBE, str(bdf)))
        for rel, text in steps:
            try:
                self.fs.write(rel, text)
            except OSError as e:
                gone = "" if self.host.exists(bdf) else " (the device has disappeared)"
                raise BindError(
                    f"passthrough {bdf}: writing {text!r} to /{rel} failed: {_oserror(e)}{gone}."
                    " hil is putting the device back; dmesg says why the kernel refused."
                ) from None
        if not self._settles(bdf, fs.VFIO_DRIVER):
            raise BindError(
                f"passthrough {bdf}: vfio-pci did not take the device (its driver is now"
                f" {self.host.driver(bdf) or 'none'}); dmesg says why. hil is putting it back."
            )

    def _settles(self, bdf: Bdf, driver: str | None) -> bool:
        deadline = time.monotonic() + self.settle_s
        while True:
            if self.host.driver(bdf) == driver:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)

    # --- restore -----------------------------------------------------------------------
    def restore(self, record: Record, registry_file: str = "") -> Restored:
        """Give ``record.bdf`` back its recorded driver and override, or raise RestoreError."""
        bdf = record.bdf
        if not self.host.exists(bdf):
            # A removed function comes back (rescan, hotplug) with no override and is
            # probed afresh: there is nothing left to undo.
            return Restored(bdf, f"{bdf} is gone from the host (removed?): nothing to restore")
        try:
            self._converge(record)
        except OSError as e:
            raise self._failed(record, f"a write failed: {_oserror(e)}", registry_file) from None
        now = self.host.driver(bdf)
        if now != record.driver:
            why = f"it ended on {now or 'no driver'}, not {record.driver or 'no driver'}"
            raise self._failed(record, why, registry_file)
        if self.host.override(bdf) != record.override:
            raise self._failed(record, "its driver_override did not take", registry_file)
        return Restored(bdf, f"{bdf} back on {record.driver or 'no driver'}")

    def _converge(self, record: Record) -> None:
        bdf = record.bdf
        # Override first, so that nothing the unbind sets off can rebind vfio-pci.
        self.fs.write(fs.device(bdf, "driver_override"), record.override or "\n")
        now = self.host.driver(bdf)
        if now == record.driver:
            return
        if now == fs.VFIO_DRIVER:
            self.fs.write(fs.driver_file(now, "unbind"), str(bdf))
        elif now is not None:
            return  # another driver took it: not ours to unbind; _failed says what to do
        if record.driver is None:
            return
        # The recorded driver's own bind file first: it gives the device to exactly
        # that driver (a reprobe could pick another that matches too).  If that driver
        # is gone or refuses, a reprobe (what libvirt does) is the second way.
        bind = fs.driver_file(record.driver, "bind")
        if not self.fs.exists(bind):
            return  # not loaded: a reprobe could only pick a wrong driver; _failed says modprobe
        try:
            self.fs.write(bind, str(bdf))
            if self._settles(bdf, record.driver):
                return
        except OSError:
            pass
        if self.host.driver(bdf) is None:
            self.fs.write(fs.DRIVERS_PROBE, str(bdf))
            self._settles(bdf, record.driver)

    def _failed(self, record: Record, why: str, registry_file: str) -> RestoreError:
        return RestoreError(
            f"passthrough {record.bdf}: could not give the device back to"
            f" {record.driver or 'no driver'}: {why}. Its state file is kept"
            f"{f' ({registry_file})' if registry_file else ''}. By hand, as root:"
            f" {'; '.join(self.manual(record, registry_file))}"
            " (or `hil vfio restore` once the cause is fixed)."
        )

    def manual(self, record: Record, registry_file: str = "") -> list[str]:
        """The shell commands that restore ``record`` from where the device is now."""
        driver = record.driver
        loaded = driver is None or self.fs.exists(f"{fs.PCI_DRIVERS}/{driver}")
        return manual_restore(record, self.host.driver(record.bdf), registry_file, loaded)


def manual_restore(
    record: Record, now: str | None, registry_file: str = "", driver_loaded: bool = True
) -> list[str]:
    """The shell commands that restore ``record`` from the device's current driver ``now``."""
    bdf = record.bdf
    override = f"/{fs.device(bdf, 'driver_override')}"
    cmds = [f"echo {record.override} > {override}" if record.override else f"echo > {override}"]
    if not driver_loaded:
        cmds.insert(0, f"modprobe {record.driver}")
    if now is not None and now != record.driver:
        cmds.append(f"echo {bdf} > /{fs.driver_file(now, 'unbind')}")
    if record.driver is not None and now != record.driver:
        cmds.append(f"echo {bdf} > /{fs.driver_file(record.driver, 'bind')}")
    if registry_file:
        cmds.append(f"rm {registry_file}")
    return cmds
