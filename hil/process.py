"""What every helper process of a run (QEMU, the vGPU bridge) needs, written once:

* ``launcher()``: the prefix that gives it a parent-death signal (util-linux ``setpriv
  --pdeathsig KILL``), so even a SIGKILLed hil leaves nothing running;
* ``stop_group()``: the escalating stop of its process group;
* ``Lifetime``: the context-manager shape (start in ``__enter__``, and stop whatever
  happens -- including a failed start -- in ``__exit__``).
"""

from __future__ import annotations

import os
import signal
import subprocess

from . import host


def launcher() -> list[str]:
    setpriv = host.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def stop_group(
    proc: subprocess.Popen, steps=((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0))
) -> int | None:
    """Signal the process group step by step until the process is gone; its status."""
    for sig, wait in steps:
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


class Lifetime:
    """start() on entry; stop() on exit and after a failed start.  stop() is idempotent."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
