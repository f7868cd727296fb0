#!/usr/bin/env python3
"""Boot-time and idle benchmark: N boots per profile, through the same runner `hil run` uses.

    bin/hil ... or:  .venv/bin/python benchmarks/boot_bench.py [-n 10] [--idle 1.0]
                         [--profile q35-tcg-bios --profile q35-kvm-pvh]

Prints, per profile, median/min/max of launch -> '@stage ready' (host ms, the `boot_ms`
metric), launch -> first console line, and the CPU idle fraction over an idle window after
boot, against the targets of issue 2.  A profile whose accelerator is unusable on this
host is reported as skipped, not failed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil import host  # noqa: E402
from hil.plan import make_plan  # noqa: E402
from hil.progress import Progress  # noqa: E402
from hil.runner import RunOptions, run_scenario  # noqa: E402
from hil.scenario import load_scenario  # noqa: E402

TARGETS = {"q35-tcg-bios": 150.0, "q35-kvm-pvh": 60.0}  # ms, median launch -> ready
IDLE_TARGET = 0.99

SCENARIO = """\
name: bench-{profile}
profile: {profile}
timeout: 60
steps:
  - expect: '@stage ready'
    timeout: 30
  - expect: {{regex: '^@tsc khz='}}
  - idle: {idle}
  - send: shutdown
  - exit: shutdown
"""


def bench(profile: str, runs: int, idle: float, workdir: Path) -> dict:
    path = workdir / f"bench-{profile}.yaml"
    path.write_text(textwrap.dedent(SCENARIO.format(profile=profile, idle=idle)))
    sc = load_scenario(path)
    opts = RunOptions(results_root=workdir / "results")
    quiet = Progress("quiet", out=open("/dev/null", "w"))  # noqa: SIM115
    boot, first, idles, accel = [], [], [], ""
    for _ in range(runs):
        rec = run_scenario(make_plan(sc), opts, quiet)
        if rec.verdict.outcome != "pass":
            return {"profile": profile, "error": rec.verdict.reason}
        m = rec.data["metrics"]
        boot.append(m["boot_ms"])
        first.append(m["first_output_ms"])
        idles.append(m["cpu_idle"])
        accel = f"{rec.data['accel']} ({rec.data['idle_windows'][0]['method']})"
    return {"profile": profile, "accel": accel, "boot": boot, "first": first, "idle": idles}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=10)
    ap.add_argument("--idle", type=float, default=1.0, help="idle window, seconds")
    ap.add_argument(
        "--profile",
        action="append",
        help="profiles to measure (default: q35-tcg-bios q35-tcg-pvh q35-kvm-pvh)",
    )
    args = ap.parse_args()
    profiles = args.profile or ["q35-tcg-bios", "q35-tcg-pvh", "q35-kvm-pvh"]
    k = host.kvm()
    print(
        f"host: {host.version(host.QEMU)}; KVM: {'usable' if k.usable else k.reason}"
        f"{' (nested)' if k.nested else ''}; {args.runs} runs per profile, "
        f"idle window {args.idle:g} s\n"
    )
    head = (
        f"{'profile':<14} {'accel (idle method)':<28} {'ready median':>12} {'min':>7} "
        f"{'max':>7} {'1st line':>8} {'idle min':>9} {'target':>14}"
    )
    print(head)
    print("-" * len(head))
    ok = True
    with tempfile.TemporaryDirectory(prefix="hil-bench-") as tmp:
        for profile in profiles:
            if "kvm" in profile and not k.usable:
                print(f"{profile:<14} skipped: KVM unusable ({k.reason})")
                continue
            r = bench(profile, args.runs, args.idle, Path(tmp))
            if "error" in r:
                print(f"{profile:<14} ERROR: {r['error']}")
                ok = False
                continue
            med = statistics.median(r["boot"])
            target = TARGETS.get(profile)
            verdict = ""
            if target is not None:
                met = med <= target and min(r["idle"]) >= IDLE_TARGET
                verdict = f"<={target:g} ms {'met' if met else 'MISSED'}"
            print(
                f"{profile:<14} {r['accel']:<28} {med:>9.1f} ms {min(r['boot']):>7.1f} "
                f"{max(r['boot']):>7.1f} {statistics.median(r['first']):>8.1f} "
                f"{min(r['idle']) * 100:>8.2f}% {verdict:>14}"
            )
    print(
        "\nready = host ms from the fork of QEMU to the '@stage ready' line (boot_ms); "
        "1st line = to the first console line; idle = least idle vCPU in the window."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
