#!/usr/bin/env python3
"""Posted writes, A/B: vgpu_bench's drive workload with waiting writes and with posted ones.

    .venv/bin/python benchmarks/posted_bench.py [-n 8] [--profile q35-tcg-vgpu]

Each trial runs benchmarks/programs/drive.pxs (16 threads x 100 x (out, out, in)) and
drive_posted.pxs (the same with both writes `outp`) back to back, alternating which goes
first so a shared machine's load drifts into both alike.  Per run: requests per second
(program load to end), requests per guest wake-up, executor dispatches, the round trip
of the requests a thread waited for.  Then the medians and the ratio posted / waiting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from vgpu_bench import run, write_scenarios  # noqa: E402


def figures(rec: dict) -> dict:
    m, g = rec["metrics"], rec["gpu"]
    return {
        "req_s": m["gpu.requests_per_s"],
        "req_wake": 1 / m["gpu.wakeups_per_request"],
        "dispatches": m["gpu.dispatches"],
        "rt_p50_us": g["roundtrip_us"]["p50"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--trials", type=int, default=8)
    ap.add_argument("--profile", default="q35-tcg-vgpu")
    args = ap.parse_args()
    out: dict[str, list[dict]] = {"waiting": [], "posted": []}
    print(
        f"{'trial':>5} {'variant':<8} {'req/s':>7} {'req/wake':>9} {'dispatches':>10} {'rt p50 us':>10}"
    )
    with tempfile.TemporaryDirectory(prefix="hil-posted-bench-") as tmp:
        tmp = Path(tmp)
        _, drive, posted = write_scenarios(tmp, args.profile)
        for i in range(args.trials):
            order = [("waiting", drive), ("posted", posted)]
            for name, path in order if i % 2 == 0 else order[::-1]:
                f = figures(run(path, args.profile, tmp))
                out[name].append(f)
                print(
                    f"{i + 1:>5} {name:<8} {f['req_s']:>7.0f} {f['req_wake']:>9.1f}"
                    f" {f['dispatches']:>10} {f['rt_p50_us']:>10.1f}",
                    flush=True,
                )
    print(f"\nmedians over {args.trials} trials ({args.profile}):")
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in out.items()}
    for k, v in med.items():
        print(f"  {k:<8} " + "  ".join(f"{f} {x:.1f}" for f, x in v.items()))
    ratios = [p["req_s"] / w["req_s"] for w, p in zip(out["waiting"], out["posted"], strict=True)]
    print(
        f"  posted / waiting req/s: {med['posted']['req_s'] / med['waiting']['req_s']:.2f} "
        f"(per trial: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
