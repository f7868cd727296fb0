"""What every helper process of a run (QEMU, the vGPU bridge) needs, written once:

* ``launcher()``: the prefix that gives it a parent-death signal (util-linux ``setpriv
  --pdeathsig KILL``), so even a SIGKILLed hil leaves nothing running;
* ``stop_group()``: the escalating stop of its process group;
* ``die_with_parent()``: the same for a process hil forks itself (a batch's run, the
  plot worker);
* ``Lifetime``: the context-manager shape (start in ``__enter__``, and stop whatever
  happens -- including a failed start -- in ``__exit__``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from . import host

_PR_SET_PDEATHSIG = 1


def launcher() -> list[str]:
    setpriv = host.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def spawn_python_helper(module_argv: list[str], stderr_path) -> subprocess.Popen:
    """``python -m MODULE ARGS`` beside QEMU (the vGPU bridge, the UDP echo peer): this
    repository first on PYTHONPATH, stdout a pipe for its READY line, stderr to a file in
    the run directory, its own session (stopped as a group), dying with hil."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    with open(stderr_path, "wb") as err:
        return subprocess.Popen(
            launcher() + [sys.executable, "-m", *module_argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            start_new_session=True,
            close_fds=True,
        )


def die_with_parent(sig: int, parent: int) -> bool:
    """Ask the kernel to send ``sig`` to this (forked) process when its parent dies.
    False when the parent ``parent`` is already gone (the caller should exit)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    return os.getppid() == parent


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
