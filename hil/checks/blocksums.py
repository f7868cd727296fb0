"""block-sums (post-run): the per-range checksums a block test printed equal those hil
computes on the host from the same pattern (hil/blockpattern.py), and every range
reports no errors.  The lines, as the pixel block test prints them (docs/drivers.md):

    range 00000000 lba 00000000 n 00000080 sum 5f3e2a10 errors 00000000

    checks:
      - block-sums: {device: nvme0, seed: 1, ranges: 8}
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..devices.base import Finding
from .base import CHECKS, CheckKind

LINE = re.compile(
    r"^range ([0-9a-f]{8}) lba ([0-9a-f]{8}) n ([0-9a-f]{8}) sum ([0-9a-f]{8}) "
    r"errors ([0-9a-f]{8})$"
)


@dataclass(frozen=True)
class BlockSums:
    device: str
    seed: int
    ranges: int


@CHECKS.register
class BlockSumsKind(CheckKind):
    name = "block-sums"
    post = True
    keys = ("device", "seed", "ranges")

    def parse(self, f, ctx):
        device = f.get("device", str, example="device: nvme0")
        seed = f.get("seed", int, example="seed: 1")
        ranges = f.get("ranges", int, example="ranges: 8")
        if ranges is not None and not 1 <= ranges <= 4096:
            f.error("ranges", "must be 1 to 4096.")
            return None
        if None in (device, seed, ranges):
            return None
        return BlockSums(device, seed, ranges)

    def run_post(self, spec, ctx) -> Finding:
        from ..blockpattern import checksum, pattern
        from ..devices import instances

        dev = instances(ctx.plan.devices).get(spec.device)
        lba = getattr(dev, "lba_size", 512)
        seen = [(ln, m) for ln in ctx.lines if (m := LINE.match(ln.text))]
        if len(seen) != spec.ranges:
            return Finding(
                "block-sums",
                "fail",
                f"{len(seen)} range lines on the console, the scenario expects {spec.ranges}",
                "block-sums",
                evidence=[ln.text for ln, _ in seen[:8]],
            )
        for ln, m in seen:
            first, n, got, errors = (int(m[i], 16) for i in (2, 3, 4, 5))
            want = checksum(pattern(spec.seed, first, lba, n))
            if got != want or errors:
                what = (
                    f"errors {errors}" if errors else f"sum {got:08x}, the host computes {want:08x}"
                )
                return Finding(
                    "block-sums",
                    "fail",
                    f"range at LBA {first} ({n} LBAs): {what}: {ln.text!r} at {ln.t * 1000:.1f} ms",
                    "block-sums",
                    evidence=[ln.text],
                )
        return Finding(
            "block-sums",
            "pass",
            f"{spec.ranges} range checksums equal the host's (seed {spec.seed})",
        )
