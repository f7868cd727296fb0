"""disk (post-run): the disk a device used holds exactly what the guest should have
written there, and every other block is as the run created it.

    checks:
      - disk:
          device: nvme0              # the instance name (its artifact nvme0.disk)
          seed: 1                    # the block pattern written (hil/blockpattern.py)
          written: [[0, 1024], [1024, 1024]]   # [first LBA, count] ranges the guest wrote

The LBA size is the device's (``lba_size``); a disk created with a fill (``zero``,
``lba``, a byte, ``{random: SEED}``) is regenerated to compare the untouched blocks.
On a mismatch the verdict names the first differing LBA and byte, expected vs found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..devices.base import Finding
from .base import CHECKS, CheckKind


@dataclass(frozen=True)
class DiskCheck:
    device: str
    seed: int
    written: tuple[tuple[int, int], ...]


@CHECKS.register
class DiskCheckKind(CheckKind):
    name = "disk"
    post = True
    keys = ("device", "seed", "written")

    def parse(self, f, ctx):
        device = f.get("device", str, example="device: nvme0")
        seed = f.get("seed", int, example="seed: 1")
        raw = f.get("written", list, [], example="written: [[0, 1024]]")
        ranges = []
        for i, r in enumerate(raw or []):
            ok = (
                isinstance(r, list)
                and len(r) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r)
            )
            if not ok:
                f.error("written", f"item {i} is not [first LBA, count] (two whole numbers).")
                return None
            ranges.append((r[0], r[1]))
        if device is None or seed is None or not f.ok:
            return None
        if not 0 <= seed < 1 << 32:
            f.error("seed", "must be a 32-bit unsigned integer.")
            return None
        return DiskCheck(device, seed, tuple(ranges))

    def run_post(self, spec, ctx) -> Finding:
        from ..blockpattern import first_mismatch
        from ..devices import instances
        from ..devices.disk import content

        # nvme0n2: namespace 2 of nvme0 (hil/devices/nvme.py); its disk is made like ns 1's
        m = re.fullmatch(r"(nvme\d+)n([2-9])", spec.device)
        dev = instances(ctx.plan.devices).get(m[1] if m else spec.device)
        disk_name = ctx.artifacts.get(f"{spec.device}.disk")
        if dev is None or disk_name is None:
            known = [k.removesuffix(".disk") for k in ctx.artifacts if k.endswith(".disk")]
            return Finding(
                "disk check",
                "fail",
                f"no disk of a device named {spec.device!r} in this run (disks: "
                f"{', '.join(known) or 'none'})",
                "disk",
            )
        if getattr(dev, "file", None) is not None:
            return Finding(
                "disk check",
                "fail",
                f"{spec.device} is a copy-on-write overlay over {dev.file}: the disk check "
                "compares fresh disks (size and fill) only",
                "disk",
            )
        lba = getattr(dev, "lba_size", 512)
        try:
            bad = first_mismatch(
                ctx.run_dir / disk_name, lba, spec.seed, list(spec.written), content(dev.fill)
            )
        except ValueError as e:
            return Finding("disk check", "fail", f"{spec.device}: {e}", "disk")
        total = sum(n for _, n in spec.written)
        if bad is not None:
            where = next(
                (f"written range [{a}, {a + n})" for a, n in spec.written if a <= bad.lba < a + n),
                "a block the guest should not have written",
            )
            return Finding(
                "disk check",
                "fail",
                f"{spec.device}: {bad} ({where}; {lba}-byte LBAs)",
                "disk",
                evidence=[str(bad)],
            )
        return Finding(
            "disk check",
            "pass",
            f"{spec.device}: {total} written LBAs hold the pattern (seed {spec.seed}), the "
            "rest is as created",
        )
