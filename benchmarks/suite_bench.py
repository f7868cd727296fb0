#!/usr/bin/env python3
"""Suite benchmark: wall time of the whole suite with -j 1 vs -j 2, and hil's own overhead.

    .venv/bin/python benchmarks/suite_bench.py [--trials 3] [--repeat 3] [--jobs 1 --jobs 2]

Runs the suite as cron would -- `hil run scenarios/ -j J --repeat R` and `hil nightly -j J
--repeat R` as subprocesses, each `--trials` times into a scratch results directory -- and
prints, per command and J, the median wall time, the machine time summed over the runs, and
hil's overhead:

    machine  = QEMU launch to stop (`durations.machine_s` in each run.json), plus for a
               virtual GPU starting its bridge (`gpu_start_s`) and the host-side
               reference check of what the GPU did (`gpu_check_s`): the system under
               test and the checks of it
    overhead = wall - sum of machine time       (only meaningful with -j 1, where runs
                                                 do not overlap)

i.e. everything else: Python start-up and imports, loading the scenarios, the image cache
check, per-run disks, forking the run processes, writing results, the history database
and (nightly) the comparison and the report with its plots.  Target: < 10 % of the wall
time.  The image cache is warmed first, so builds are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hil import host  # noqa: E402

TARGET = 0.10


def run(cmd: list[str], results: Path, env: dict) -> tuple[float, int]:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "hil.cli", *cmd, "--results", str(results), "-q"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return time.monotonic() - t0, p.returncode


def qemu_and_runs(results: Path, before: set[Path]) -> tuple[float, float, int, list[str]]:
    """Sum of machine_s and of total_s over the run directories that are new since
    ``before``; the count; the outcomes."""
    machine = total = 0.0
    outcomes = []
    new = [p for p in results.glob("*/*/run.json") if p.parent not in before]
    for p in new:
        data = json.loads(p.read_text())
        d = data["durations"]
        machine += sum(d.get(k, 0.0) for k in ("machine_s", "gpu_start_s", "gpu_check_s"))
        total += d.get("total_s", 0.0)
        outcomes.append(data["verdict"]["outcome"])
    return machine, total, len(new), outcomes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="--repeat given to the suite")
    ap.add_argument("--jobs", type=int, action="append", help="default: 1 and 2")
    ap.add_argument(
        "--suite", nargs="+", default=["scenarios"], help="scenario files or directories"
    )
    args = ap.parse_args()
    jobs = args.jobs or [1, 2]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CI": ""}
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")

    k = host.kvm()
    print(
        f"host: {platform.node()}, {os.cpu_count()} CPUs, {host.version(host.QEMU)}; KVM: "
        f"{'usable' if k.usable else k.reason}{' (nested)' if k.nested else ''}; "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    print(
        f"suite: {' '.join(args.suite)} with each scenario's own profile, --repeat {args.repeat}; "
        f"{args.trials} trials per row, median shown\n"
    )
    head = (
        f"{'command':<12} {'-j':>3} {'runs':>5} {'wall s':>8} {'machine s':>9} {'in-run s':>9} "
        f"{'overhead s':>11} {'overhead':>9} {'speedup':>8}"
    )
    print(head)
    print("-" * len(head))
    ok = True
    with tempfile.TemporaryDirectory(prefix="hil-suite-bench-") as tmp:
        env["PXOS_HIL_CACHE"] = env.get("PXOS_HIL_CACHE") or str(Path(tmp) / "cache")
        warm, code = run(["run", *args.suite, "--no-history"], Path(tmp) / "warm", env)
        if code != 0:
            print(f"the suite does not pass here (exit {code}); fix that first")
            return 1
        for command in ("run", "nightly"):
            base_wall = None
            results = Path(tmp) / command  # one history per command: nightly has nights
            for j in jobs:
                walls, machines, totals, counts = [], [], [], []
                for _ in range(args.trials):
                    before = {p.parent for p in results.glob("*/*/run.json")}
                    wall, code = run(
                        [command, *args.suite, "-j", str(j), "--repeat", str(args.repeat)],
                        results,
                        env,
                    )
                    machine, total, n, outcomes = qemu_and_runs(results, before)
                    if any(o != "pass" for o in outcomes) or (command == "run" and code):
                        ok = False
                        print(f"{command} -j {j}: a run did not pass ({outcomes}, exit {code})")
                    walls.append(wall)
                    machines.append(machine)
                    totals.append(total)
                    counts.append(n)
                wall = statistics.median(walls)
                machine = statistics.median(machines)
                in_run = statistics.median(t - m for t, m in zip(totals, machines, strict=True))
                base_wall = base_wall or wall
                if j == 1:
                    over = wall - machine
                    over_s = f"{over:>11.2f} {over / wall * 100:>8.1f}%"
                    if over / wall >= TARGET:
                        over_s += " MISSED"
                else:
                    over_s = f"{'(overlap)':>11} {'-':>9}"
                print(
                    f"hil {command:<8} {j:>3} {statistics.median(counts):>5.0f} {wall:>8.2f} "
                    f"{machine:>9.2f} {in_run:>9.2f} {over_s} {base_wall / wall:>7.2f}x"
                )
    print(
        "\nwall = the whole command, process start to exit; machine = sum over runs of QEMU "
        "launch -> stop,\nplus vGPU bridge start-up and reference check; in-run = sum over "
        "runs of the rest of a run\n(image cache check, per-run disks, results files); "
        f"overhead = wall - machine (-j 1 only), target < {TARGET * 100:g} % of wall."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
