"""The three faces of a machine that steps and checks use (labgrid's protocols, small).

Steps never see ``QemuMachine``: they talk to a ``Power`` (is it running, how did it
end), a ``Monitor`` (QMP commands and events) and the console (hil.console.Console).
A fake in a unit test, QEMU today, or a real board later implements the same three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Power(Protocol):
    launched: float  # monotonic time of power-on (console timestamps count from it)
    pid: int | None  # the process whose threads are the vCPUs (for CPU-time idle probes)
    log_path: Path  # the machine's own log (QEMU's -D file), read to explain an exit

    def poll(self) -> int | None:
        """Exit status once it has stopped, else None."""

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for it to stop; its exit status or None."""

    def wait_started(self, timeout: float) -> None:
        """Block until the machine can take monitor commands (InfraError if it died)."""

    def stderr_tail(self, n: int = 5) -> str:
        """What the machine said about itself last (start-up errors)."""

    def release_console(self) -> None:
        """Let the console see the machine's exit as EOF (drop our side's extra handle)."""


@runtime_checkable
class Monitor(Protocol):
    connected: bool

    def cmd(self, name: str, timeout: float = ..., **args): ...

    def events(self) -> list: ...
