#!/usr/bin/env python3
"""NVMe benchmark: 4 KiB random reads by the pixel NVMe driver, as the GPU side sees them.

    .venv/bin/python benchmarks/nvme_bench.py [--rounds 64] [--tcg-only]

For each profile (TCG with completions by MSI-X -> GPU event; KVM with completions by
polling, docs/drivers.md) and queue depth (QD1: 1 worker x 1 command; QD16: 2 workers
x 8), the block test runs in BENCH mode (pxi/programs/nvme/blocktest.pxs): rounds of QD
random 4 KiB reads, each round submitted with one SQ doorbell and reaped to the last
completion.  The GPU has no clock, so the host times it from the vGPU trace with
hil/nvmeperf.py -- the same code that gives scenarios/nvme.yaml its nvme.qd* metrics:

  * IOPS, MB/s: reads / the bench window (the run that rang the first SQ doorbell .. the
    one that rang the last CQ doorbell; trace.jsonl `at`, `dt`);
  * latency p50/p99 per round (a command's latency at QD1; at QD16 the time the slowest
    of the 16 took): from the dispatch that rang the SQ doorbell to the one that rang the
    CQ head doorbell after the round's last completion;
  * where the time goes inside the bench window: GPU execution (sum of dispatch times,
    trace `dt`), mailbox round trips (requests x the bridge's median round trip), and the
    rest (the device, the kernel's interrupt path, the bridge's own work between
    dispatches); requests per round.

The reference, measured in the same run: Linux's own nvme driver and fio on the same
QEMU NVMe device (scenarios/linux-nvme-fio.yaml with this benchmark's disk size, a Linux
image built from Debian's packages, TCG), 4 KiB random reads at QD1 and QD16; the pixel
driver's IOPS is reported as a fraction of Linux's at the same queue depth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hil import host, nvmeperf  # noqa: E402

PROFILES = {"tcg (irq)": ("q35-tcg-vgpu", 1), "kvm (poll)": ("q35-kvm-vgpu", 0)}
QDS = {1: (1, 1), 16: (2, 8)}
SCENARIO = """\
name: {name}
profile: {profile}
timeout: 600
devices:
  - nvme: {{size: 64M, fill: zero, serial: PXBENCH}}
gpu: {{program: {program}}}
steps:
  - expect: {{regex: '^bench qd [0-9a-f]{{8}} rounds [0-9a-f]{{8}} start$'}}
    timeout: 120
  - expect: 'bench done errors 00000000'
    timeout: 500
  - send: shutdown
  - exit: shutdown
"""


def analyse(run_dir: Path, qd: int) -> dict:
    """The run's one bench phase (hil/nvmeperf.py)."""
    rt = nvmeperf.roundtrip_s(run_dir / "bridge.json")
    phases = [p for p in nvmeperf.analyse(run_dir / "trace.jsonl", rt) if p["qd"] == qd]
    if not phases or not phases[0]["rounds"]:
        raise SystemExit(f"{run_dir}: no complete QD{qd} bench phase in trace.jsonl")
    return phases[0]


def run_one(tmp: Path, label: str, profile: str, irq: int, qd: int, rounds: int) -> dict:
    workers, qdw = QDS[qd]
    name = f"nvme-bench-{'kvm' if 'kvm' in label else 'tcg'}-qd{qd}"
    prog = tmp / f"{name}.pxs"
    prog.write_text(
        f"BENCH = {rounds}\nWORKERS = {workers}\nQDW = {qdw}\nIRQ_MODE = {irq}\n"
        f"RANGE_LBAS = {8 * qdw}\n"  # one round of 4 KiB chunks (unused by BENCH)
        f'.include "{REPO / "pxi" / "programs" / "nvme" / "blocktest.pxs"}"\n'
    )
    sc = tmp / f"{name}.yaml"
    sc.write_text(SCENARIO.format(name=name, profile=profile, program=prog))
    return analyse(hil_run(sc, tmp / "results", name), qd)


def hil_run(scenario: Path, results: Path, name: str) -> Path:
    """`hil run` of one scenario file; its run directory (SystemExit if it failed)."""
    p = subprocess.run(
        [sys.executable, "-m", "hil.cli", "run", str(scenario), "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{p.stdout[-3000:]}{p.stderr[-2000:]}")
    return sorted((results / name).iterdir())[-1]


def run_linux(tmp: Path) -> dict[int, float]:
    """fio's IOPS at QD1 and QD16 in the Linux guest (scenarios/linux-nvme-fio.yaml)."""
    text = (REPO / "scenarios" / "linux-nvme-fio.yaml").read_text()
    text = text.replace("size: 16M", "size: 64M").replace(
        "name: linux-nvme-fio", "name: nvme-bench-linux"
    )
    sc = tmp / "nvme-bench-linux.yaml"
    sc.write_text(text)
    run_dir = hil_run(sc, tmp / "results", "nvme-bench-linux")
    run = json.loads((run_dir / "run.json").read_text())
    return {qd: run["metrics"][f"fio.qd{qd}.iops"] for qd in QDS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=64, help="rounds of QD reads (default 64)")
    ap.add_argument("--tcg-only", action="store_true")
    ap.add_argument("--no-linux", action="store_true", help="skip the Linux/fio reference")
    args = ap.parse_args()
    profiles = dict(PROFILES)
    if args.tcg_only or not host.kvm().usable:
        profiles.pop("kvm (poll)")
    print(
        f"{'profile':<11} {'QD':>3} {'IOPS':>7} {'MB/s':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'GPU exec':>8} {'mailbox':>8} {'req/round':>9}  (shares of the bench window)"
    )
    tcg: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="nvme-bench-") as d:
        for label, (profile, irq) in profiles.items():
            for qd in QDS:
                r = run_one(Path(d), label, profile, irq, qd, args.rounds)
                if label.startswith("tcg"):
                    tcg[qd] = r["iops"]
                print(
                    f"{label:<11} {qd:>3} {r['iops']:7.0f} {r['mbps']:6.2f} "
                    f"{r['lat_p50_ms']:7.2f} {r['lat_p99_ms']:7.2f} "
                    f"{100 * r['gpu_frac']:7.1f}% {100 * r['mailbox_frac']:7.1f}% "
                    f"{r['requests'] / max(1, r['rounds']):9.1f}",
                    flush=True,
                )
        if not args.no_linux:
            linux = run_linux(Path(d))
            print(
                "\nreference: Linux nvme driver + fio (libaio, direct), same QEMU NVMe device, TCG"
            )
            print(f"{'QD':>3} {'Linux IOPS':>10} {'pixel IOPS':>10} {'pixel / Linux':>13}")
            for qd in QDS:
                ratio = tcg[qd] / linux[qd] if qd in tcg and linux[qd] else float("nan")
                print(f"{qd:>3} {linux[qd]:10.0f} {tcg.get(qd, float('nan')):10.0f} {ratio:13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
