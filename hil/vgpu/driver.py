"""Power driver for the virtual GPU: the bridge process beside QEMU, and its lifetime.

``BridgeProcess`` is a context manager like ``QemuMachine``: the bridge is started
before QEMU (its ivshmem socket must be listening when QEMU starts) and stopped after
it, whatever happens in between.  Its socket lives in a private temp directory that is
removed on stop; its VRAM is an anonymous memfd, freed when the bridge and QEMU are gone,
so nothing is left in /dev/shm.  Like QEMU it runs in its own process group with a
parent-death signal, so a killed hil takes it along.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .. import janitor
from ..errors import InfraError
from ..process import Lifetime, spawn_python_helper, stop_group

READY_TIMEOUT = 30.0


class BridgeProcess(Lifetime):
    def __init__(self, run_dir: Path, vram_size: int, backend: str, budget: int):
        self.run_dir = run_dir
        self.vram_size = vram_size
        self.backend = backend
        self.budget = budget
        self.proc: subprocess.Popen | None = None
        self.sockdir: str | None = None
        self.socket = ""
        self.status: int | None = None

    def start(self) -> None:
        self.sockdir = janitor.owned_tempdir("hil-vgpu-")  # cleaned up after a SIGKILL
        self.socket = os.path.join(self.sockdir, "ivshmem.sock")
        argv = [
            "hil.vgpu.bridge",
            "--socket",
            self.socket,
            "--vram-size",
            str(self.vram_size),
            "--run-dir",
            str(self.run_dir),
            "--backend",
            self.backend,
            "--budget",
            str(self.budget),
        ]
        self.proc = spawn_python_helper(argv, self.run_dir / "bridge.stderr")
        deadline = time.monotonic() + READY_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise InfraError(f"the vGPU bridge did not start: {self.diagnosis()}")
            if select.select([self.proc.stdout], [], [], min(left, 0.2))[0]:
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:
                    continue
                line += chunk
        if line.strip() != b"READY":
            raise InfraError(f"the vGPU bridge said {line!r} instead of READY")

    def qemu_args(self) -> list[str]:
        return [
            "-chardev",
            f"socket,id=vgpu,path={self.socket}",
            "-device",
            "ivshmem-doorbell,chardev=vgpu,vectors=1",
        ]

    def check(self) -> None:
        """Raise InfraError if the bridge died while the machine runs."""
        if self.proc is not None and self.proc.poll() is not None:
            self.status = self.proc.returncode
            raise InfraError(
                f"the vGPU bridge exited unexpectedly (status {self.status}): {self.diagnosis()}"
            )

    def diagnosis(self) -> str:
        """The last lines the bridge wrote about itself."""
        lines = []
        for name in ("bridge.stderr", "bridge.log"):
            try:
                text = (self.run_dir / name).read_text(errors="replace").strip()
            except OSError:
                continue
            lines += [ln.strip() for ln in text.splitlines() if ln.strip()][-3:]
        return " | ".join(lines[-4:]) or "no message"

    def stop(self) -> int | None:
        """SIGTERM (the bridge writes its final records), SIGKILL if it hangs; idempotent."""
        if self.proc is not None:
            # a dispatch may be running: give it time to end and the records to be written
            self.status = stop_group(self.proc, ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)))
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
        if self.sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)
            self.sockdir = None
        return self.status

    def stats(self) -> dict | None:
        try:
            return json.loads((self.run_dir / "bridge.json").read_text())
        except (OSError, ValueError):
            return None
