#!/usr/bin/env python3
"""Network benchmark: UDP echo through the pixel e1000 driver, as the GPU side sees it.

    .venv/bin/python benchmarks/net_bench.py [--count 64] [--profile q35-tcg-vgpu]

For each configuration (datagrams in flight per round = WORKERS x PER; payload sizes),
pxi/programs/net/echotest.pxs echoes COUNT datagrams off hil's UDP echo peer on the
host (the nic kind's udp_echo) through QEMU's e1000 and user network.  The GPU has no
clock, so the host times it from the bridge's trace (hil/netmetrics.py): a round is the
owner's TDT write to its RDT write once every echo was received and verified; packets/s
= datagrams out and back / the sum of the rounds.  cpu_idle is measured during the
traffic (an `idle` step).

The reference, in the same run: scenarios/linux-net-echo.yaml -- Linux's own e1000 driver
on the same QEMU e1000 and user network, a Python client (Debian's python3.11-minimal)
echoing 64 datagrams of 18-1472 bytes, 8 in flight per round, off the same kind of peer,
timed on the guest's clock.  Its line is set against the pixel driver's "4 x 2, 18-1472 B"
line (8 in flight, the same size range), as a ratio.  Under TCG both guests run emulated,
so the ratio compares drivers on the same emulator, not on hardware.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {  # label -> (WORKERS, PER, SIZE_MIN, SIZE_MAX)
    "1 x 1, 64 B": (1, 1, 64, 64),
    "4 x 2, 18-1472 B": (4, 2, 18, 1472),
    "8 x 2, 1472 B": (8, 2, 1472, 1472),
}
SCENARIO = """\
name: {name}
profile: {profile}
timeout: 600
devices:
  - nic: {{model: e1000, udp_echo: {{port: {port}}}}}
gpu:
  program: {program}
  defines: {{WORKERS: {w}, PER: {per}, COUNT: {count}, SIZE_MIN: {lo}, SIZE_MAX: {hi}, PEER_PORT: {port}}}
steps:
  - expect: 'arp: 10.0.2.2 is at '
    timeout: 120
  - idle: 1.0
  - expect: 'net done errors 00000000'
    timeout: 500
  - send: shutdown
  - exit: shutdown
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(tmp: Path, label: str, profile: str, count: int) -> dict:
    w, per, lo, hi = CONFIGS[label]
    name = f"net-bench-{w}x{per}-{lo}-{hi}"
    sc = tmp / f"{name}.yaml"
    program = REPO / "pxi" / "programs" / "net" / "echotest.pxs"
    count = max(w * per, count // (w * per) * (w * per))
    sc.write_text(
        SCENARIO.format(
            name=name,
            profile=profile,
            port=free_port(),
            program=program,
            w=w,
            per=per,
            count=count,
            lo=lo,
            hi=hi,
        )
    )
    return {"count": count, **hil_run(sc, name, tmp / "results")}


def hil_run(sc: Path, name: str, results: Path) -> dict:
    """`hil run SC`; the run's metrics (exit on anything but a pass)."""
    p = subprocess.run(
        [sys.executable, "-m", "hil.cli", "run", str(sc), "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{p.stdout[-3000:]}{p.stderr[-2000:]}")
    run = json.loads((sorted((results / name).iterdir())[-1] / "run.json").read_text())
    return run["metrics"]


def run_linux(tmp: Path) -> dict:
    return hil_run(REPO / "scenarios" / "linux-net-echo.yaml", "linux-net-echo", tmp / "results")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=64, help="datagrams per configuration")
    ap.add_argument("--profile", default="q35-tcg-vgpu")
    ap.add_argument("--no-linux", action="store_true", help="leave the Linux reference out")
    args = ap.parse_args()
    print(f"profile {args.profile}, {args.count} datagrams per line")
    print(
        "| in flight x size | datagrams | packets/s | round p50 | round p99 | cpu idle | "
        "GPU round trip p50 |"
    )
    print("|---|---|---|---|---|---|---|")
    pixel = {}
    with tempfile.TemporaryDirectory(prefix="net-bench-") as tmp:
        for label in CONFIGS:
            m = pixel[label] = run_one(Path(tmp), label, args.profile, args.count)
            print(
                f"| {label} | {m['count']} | {m.get('net.packets_per_s', 0):.1f} | "
                f"{m.get('net.round_ms.p50', 0):.1f} ms | {m.get('net.round_ms.p99', 0):.1f} ms | "
                f"{m.get('cpu_idle', 0):.2f} | {m.get('gpu.roundtrip_us.p50', 0):.0f} us |",
                flush=True,
            )
        if args.no_linux:
            return 0
        lx = run_linux(Path(tmp))
    px = pixel["4 x 2, 18-1472 B"]
    print(
        f"\nLinux e1000 + Python client (scenarios/linux-net-echo.yaml, q35-tcg-bios), 8 in "
        f"flight, 18-1472 B, {lx['linux_net.ok']:.0f} echoed: {lx['linux_net.packets_per_s']:.1f}"
        f" packets/s, round p50 {lx['linux_net.round_ms.p50']:.1f} ms, p99 "
        f"{lx['linux_net.round_ms.p99']:.1f} ms"
    )
    print(
        f"pixel / Linux: packets/s {px['net.packets_per_s'] / lx['linux_net.packets_per_s']:.3f},"
        f" round p50 {px['net.round_ms.p50'] / lx['linux_net.round_ms.p50']:.1f}x Linux's"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
