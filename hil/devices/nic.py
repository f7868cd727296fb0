"""nic: a network card on QEMU's user network (slirp), its traffic kept as a pcap, and
optionally a peer on the host for the guest to talk to.

- nic: {model: e1000}                          # or virtio-net
- nic: {model: e1000, udp_echo: {port: 40007}}  # + a UDP echo server on 127.0.0.1:40007,
                                                 # the guest's 10.0.2.2:40007 (slirp)
- nic: {model: e1000, raw_peer: {guest: 10.0.3.15, pings: {...}, ...}}
                                                 # a raw network instead of slirp: QEMU's
                                                 # -netdev dgram, the other end the raw peer

The echo peer (hil/netpeer.py) or the raw peer (hil/rawpeer.py) is this kind's helper:
started before QEMU, stopped after it whatever happens.  A port already taken, or a peer
that does not start, is an infrastructure error (the machine is not fit for the run), not
a test failure.  The raw peer's verdict (raw-peer.json) is read back with a bounded,
validated parse (hil/rawresult.py) and fails the run when the peer saw a fault.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import janitor, qemuopt, rawresult
from ..errors import InfraError
from ..process import Lifetime, spawn_python_helper, stop_group
from ..rawspec import RawPeerSpec, parse_raw_peer
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
    raw_peer: RawPeerSpec | None = None  # a raw network (-netdev dgram) to the raw peer
    behind_root_port: bool = False
    kind = "nic"


class PeerProcess(Lifetime):
    """A network peer (python -m hil.<module>) as a process beside QEMU: started, its
    READY line awaited, watched, stopped as a group."""

    what = "peer"
    stderr_name = "peer.stderr"

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def bind_error(self, said: str) -> InfraError:
        raise NotImplementedError

    def start(self) -> None:
        self.proc = spawn_python_helper(self.argv(), self.run_dir / self.stderr_name)
        line = self._first_line()
        if line.startswith(b"BIND"):
            raise self.bind_error(line[5:].decode(errors="replace").strip())
        if line.strip() != b"READY":
            raise InfraError(f"the {self.what} did not start: {self._diagnosis(line)}")

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
            err = (self.run_dir / self.stderr_name).read_text(errors="replace").strip()
        except OSError:
            err = ""
        said = f"it said {line[:200]!r}" if line else "it said nothing"
        return f"{said}; {err.splitlines()[-1] if err else 'no message on stderr'}"

    def qemu_args(self) -> list[str]:
        return []

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise InfraError(
                f"the {self.what} exited unexpectedly (status {self.proc.returncode}); "
                f"see {self.stderr_name}"
            )

    def stop(self) -> int | None:
        status = None
        if self.proc is not None:
            status = stop_group(self.proc, ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)))
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
        return status


class EchoPeer(PeerProcess):
    """The UDP echo server (python -m hil.netpeer)."""

    what = "UDP echo peer"

    def __init__(self, run_dir: Path, port: int):
        super().__init__(run_dir)
        self.port = port

    def argv(self) -> list[str]:
        return ["hil.netpeer", "--port", str(self.port), "--run-dir", str(self.run_dir)]

    def bind_error(self, said: str) -> InfraError:
        return InfraError(
            f"the UDP echo peer cannot listen on 127.0.0.1:{self.port}: {said}. Another "
            "process holds the port: pick a free one (udp_echo: {port: N}, and the "
            "program's PEER_PORT), or stop it."
        )

    def stats(self) -> dict | None:
        try:
            return json.loads((self.run_dir / "peer.json").read_text())
        except (OSError, ValueError):
            return None


class RawPeer(PeerProcess):
    """The raw network's host end (python -m hil.rawpeer): two unix datagram sockets in
    a short-lived directory of its own (a socket path must stay under 108 bytes, which a
    run directory need not), QEMU's bound by QEMU, the peer's by the peer."""

    what = "raw network peer"
    stderr_name = "raw-peer.stderr"

    def __init__(self, run_dir: Path, spec: RawPeerSpec):
        super().__init__(run_dir)
        self.spec = spec
        self.dir: Path | None = None

    @property
    def peer_socket(self) -> Path:
        return self.dir / "peer.sock"

    @property
    def qemu_socket(self) -> Path:
        return self.dir / "qemu.sock"

    def argv(self) -> list[str]:
        cfg = self.run_dir / "raw-peer.config.json"
        cfg.write_text(json.dumps(self.spec.to_json(), indent=1) + "\n")
        return [
            "hil.rawpeer",
            "--config", str(cfg),
            "--socket", str(self.peer_socket),
            "--qemu-socket", str(self.qemu_socket),
            "--run-dir", str(self.run_dir),
        ]  # fmt: skip

    def start(self) -> None:
        try:
            # claimed: the next hil removes it if this one is SIGKILLed (hil/janitor.py)
            self.dir = Path(janitor.owned_tempdir(prefix="hil-raw-"))
        except OSError as e:
            raise InfraError(
                f"cannot create a directory for the raw network's sockets in "
                f"{tempfile.gettempdir()}: {e.strerror or e}"
            ) from None
        super().start()

    def bind_error(self, said: str) -> InfraError:
        return InfraError(f"the raw network peer cannot bind {self.peer_socket}: {said}")

    def stop(self) -> int | None:
        status = super().stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        return status


@DEVICES.register
class NicKind(DeviceKind):
    name = "nic"
    keys = ("model", "udp_echo", "raw_peer")
    spec = Nic
    metrics = {
        "peer.datagrams": "datagrams the host's UDP echo peer received and echoed",
        "net.rounds": "echo rounds of the pixel e1000 driver found in the trace",
        "net.round_ms.p50": "median UDP round trip of a round as the GPU driver completes it: "
        "TDT write -> every echo received and verified -> RDT write (ms; hil/netmetrics.py)",
        "net.round_ms.p99": "99th percentile of net.round_ms",
        "net.packets_per_s": "UDP datagrams out and back per second of echo rounds",
        "net.ping.replies": "ICMP echo replies the raw peer received and found intact",
        "net.ping.rtt_ms.p50": "median ICMP echo round trip as the raw peer (the host) sees it: "
        "request written to QEMU's socket -> reply read from it (ms)",
        "net.ping.rtt_ms.p99": "99th percentile of the raw peer's ICMP round trips",
    }

    def parse(self, f, ctx):
        before = len(ctx.problems.items)
        model = f.choice("model", MODELS, "e1000")
        port = self._echo_port(f, ctx)
        raw = parse_raw_peer(f, ctx)
        if port is not None and raw is not None:
            f.error(
                "raw_peer",
                "a NIC is on one network: udp_echo needs QEMU's user network (slirp), "
                "raw_peer replaces it with a raw one. Give the NIC one of them, or use two NICs.",
            )
        if not model or len(ctx.problems.items) > before:
            return None
        return Nic(model=model, udp_echo_port=port, raw_peer=raw)

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
        if spec.raw_peer is not None:
            return RawPeer(run_dir, spec.raw_peer)
        return EchoPeer(run_dir, spec.udp_echo_port) if spec.udp_echo_port else None

    def attach(self, spec, ctx: AttachContext):
        pcap = ctx.file("pcap", f"{ctx.name}.pcap")
        if spec.raw_peer is not None:
            ctx.add("-netdev", self._dgram(ctx))
        else:
            ctx.add("-netdev", qemuopt.opts("user", id=ctx.name))
        ctx.add("-device", qemuopt.opts(MODELS[spec.model][0], netdev=ctx.name) + ctx.bus)
        ctx.add(
            "-object",
            qemuopt.opts("filter-dump", id=f"{ctx.name}dump", netdev=ctx.name, file=pcap),
        )

    @staticmethod
    def _dgram(ctx: AttachContext) -> str:
        """Each Ethernet frame one datagram between QEMU's socket and the peer's."""
        h = ctx.helper
        where = h.dir if h is not None and h.dir is not None else ctx.run_dir  # (no helper: a plan)
        return qemuopt.opts(
            "dgram",
            id=ctx.name,
            **{
                "local.type": "unix",
                "local.path": where / "qemu.sock",
                "remote.type": "unix",
                "remote.path": where / "peer.sock",
            },
        )

    def after(self, spec, ctx: AfterContext) -> list[Finding]:
        from ..netmetrics import metrics

        if ctx.helper is None:
            return []
        if spec.raw_peer is not None:
            return rawresult.collect(ctx, ctx.helper.run_dir / rawresult.RESULT)
        ctx.metrics.update(metrics(ctx.run_dir, ctx.lines))
        stats = ctx.helper.stats()
        if stats is not None:
            ctx.metrics["peer.datagrams"] = stats["datagrams"]
            ctx.artifacts["peer.json"] = "peer.json"
        return []
