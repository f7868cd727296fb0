"""nic: a network card on QEMU's user network (slirp), its traffic kept as a pcap, and
optionally a peer on the host for the guest to talk to.

- nic: {model: e1000}                          # or virtio-net
- nic: {model: e1000, udp_echo: {port: 40007}}  # + a UDP echo server on 127.0.0.1:40007,
                                                 # the guest's 10.0.2.2:40007 (slirp)

The echo peer (hil/netpeer.py) is this kind's helper: started before QEMU, stopped after
it whatever happens.  A port already taken, or a peer that does not start, is an
infrastructure error (the machine is not fit for the run), not a test failure.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .. import qemuopt
from ..errors import InfraError
from ..process import Lifetime, spawn_python_helper, stop_group
from ..yamlsrc import Fields
from .base import AfterContext, AttachContext, DeviceKind, Finding, PciId
from .registry import DEVICES

MODELS = {  # model -> (QEMU device, PCI identity)
    "e1000": ("e1000", PciId(0x8086, 0x100E, 0x020000)),
    "virtio-net": ("virtio-net-pci", PciId(0x1AF4, 0x1000, 0x020000)),
}
READY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Nic:
    model: str = "e1000"
    udp_echo_port: int | None = None  # a UDP echo peer on the host's loopback
    behind_root_port: bool = False
    kind = "nic"


class EchoPeer(Lifetime):
    """The UDP echo server (python -m hil.netpeer) as a process beside QEMU."""

    def __init__(self, run_dir: Path, port: int):
        self.run_dir = run_dir
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = ["hil.netpeer", "--port", str(self.port), "--run-dir", str(self.run_dir)]
        self.proc = spawn_python_helper(argv, self.run_dir / "peer.stderr")
        line = self._first_line()
        if line.startswith(b"BIND"):
            raise InfraError(
                f"the UDP echo peer cannot listen on 127.0.0.1:{self.port}: "
                f"{line[5:].decode(errors='replace').strip()}. Another process holds the port: "
                "pick a free one (udp_echo: {port: N}, and the program's PEER_PORT), or stop it."
            )
        if line.strip() != b"READY":
            raise InfraError(f"the UDP echo peer did not start: {self._diagnosis(line)}")

    def _first_line(self) -> bytes:
        deadline = time.monotonic() + READY_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                return line
            if select.select([self.proc.stdout], [], [], min(left, 0.2))[0]:
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if chunk:
                    line += chunk
        return line

    def _diagnosis(self, line: bytes) -> str:
        try:
            err = (self.run_dir / "peer.stderr").read_text(errors="replace").strip()
        except OSError:
            err = ""
        said = f"it said {line[:200]!r}" if line else "it said nothing"
        return f"{said}; {err.splitlines()[-1] if err else 'no message on stderr'}"

    def qemu_args(self) -> list[str]:
        return []

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise InfraError(
                f"the UDP echo peer exited unexpectedly (status {self.proc.returncode}); "
                "see peer.stderr"
            )

    def stop(self) -> int | None:
        status = None
        if self.proc is not None:
            status = stop_group(self.proc, ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)))
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
        return status

    def stats(self) -> dict | None:
        try:
            return json.loads((self.run_dir / "peer.json").read_text())
        except (OSError, ValueError):
            return None


@DEVICES.register
class NicKind(DeviceKind):
    name = "nic"
    keys = ("model", "udp_echo")
    spec = Nic
    metrics = {
        "peer.datagrams": "datagrams the host's UDP echo peer received and echoed",
        "net.rounds": "echo rounds of the pixel e1000 driver found in the trace",
        "net.round_ms.p50": "median UDP round trip of a round as the GPU driver completes it: "
        "TDT write -> every echo received and verified -> RDT write (ms; hil/netmetrics.py)",
        "net.round_ms.p99": "99th percentile of net.round_ms",
        "net.packets_per_s": "UDP datagrams out and back per second of echo rounds",
    }

    def parse(self, f, ctx):
        before = len(ctx.problems.items)
        model = f.choice("model", MODELS, "e1000")
        port = self._echo_port(f, ctx)
        if not model or len(ctx.problems.items) > before:
            return None
        return Nic(model=model, udp_echo_port=port)

    def _echo_port(self, f, ctx) -> int | None:
        raw = f.get("udp_echo", dict, None, example="udp_echo: {port: 40007}")
        if raw is None:
            return None
        e = Fields(ctx.problems, raw, f.path("udp_echo"), ("port",), f.line_of("udp_echo"))
        port = e.get("port", int, example="port: 40007")
        e.done()
        if port is not None and not 1024 <= port <= 65535:
            e.error("port", f"{port} is not a port the peer can take: 1024 to 65535.")
            return None
        return port

    def pci_ids(self, spec):
        return [MODELS[spec.model][1]]

    def helper(self, spec, run_dir):
        return EchoPeer(run_dir, spec.udp_echo_port) if spec.udp_echo_port else None

    def attach(self, spec, ctx: AttachContext):
        pcap = ctx.file("pcap", f"{ctx.name}.pcap")
        ctx.add("-netdev", qemuopt.opts("user", id=ctx.name))
        ctx.add("-device", qemuopt.opts(MODELS[spec.model][0], netdev=ctx.name) + ctx.bus)
        ctx.add(
            "-object",
            qemuopt.opts("filter-dump", id=f"{ctx.name}dump", netdev=ctx.name, file=pcap),
        )

    def after(self, spec, ctx: AfterContext) -> list[Finding]:
        from ..netmetrics import metrics

        if ctx.helper is None:
            return []
        ctx.metrics.update(metrics(ctx.run_dir, ctx.lines))
        stats = ctx.helper.stats()
        if stats is not None:
            ctx.metrics["peer.datagrams"] = stats["datagrams"]
            ctx.artifacts["peer.json"] = "peer.json"
        return []
