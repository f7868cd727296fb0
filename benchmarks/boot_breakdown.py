#!/usr/bin/env python3
"""Where boot time goes: QEMU itself, the firmware, and each phase of the kernel.

    .venv/bin/python benchmarks/boot_breakdown.py [-n 9] [--accel kvm|tcg]

1. A trivial PVH guest (built here from a few lines of assembly: write one byte to COM1,
   halt) measures what QEMU + the accelerator + qboot cost before any kernel runs, with
   and without QEMU's ACPI tables.  A second one times a loop of 200,000 instructions
   between two bytes: how fast this accelerator runs guest code (the nested KVM of the
   CI kind of machine emulates every instruction, so there the kernel's instruction
   count is its boot time).  A third times 64 port writes and 64 MMIO reads: what one
   exit to QEMU costs.
2. Scratch builds of the real kernel with one-byte markers written to COM1 (image
   defines; the normal build has none) time the phases before the first console line:
   PVH entry, page tables built, long mode and the first C code.
3. The real kernel's own stage markers time the rest (PCI enumeration, ready), and KVM's
   exit counters (under KVM) say how many exits the boot took.
Medians of N interleaved rounds (each boots every guest once, so a pxOS boot's floor is
measured right before it); host ms from the fork of QEMU.  The ratio the issue-17 table
reports is the shipped kernel's ready over the trivial guest's first byte (ACPI off), per
round.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hil import host, image  # noqa: E402
from hil.machine import KVM_DEFAULT_CPU  # noqa: E402

TRIVIAL = r"""
.section .note.pvh, "a"
.align 4
.long 4, 4, 18
.asciz "Xen"
.align 4
.long _start
.text
.code32
.globl _start
_start:
  mov $0x3f8, %dx
  mov $'X', %al
  out %al, %dx
  LOOP
1: cli
  hlt
  jmp 1b
"""
# 100,000 iterations of two instructions, then a second byte
LOOP = """mov $100000, %ecx
2: dec %ecx
  jnz 2b
  mov $'Y', %al
  out %al, %dx"""
# What an exit to QEMU costs: 64 more bytes to COM1 (one exit each), then 64 reads of an
# MMIO register QEMU emulates (the HPET's capabilities, 0xFED00000), each after a marker.
EXITS = (
    "mov $'a', %al\n"
    + "out %al, %dx\n" * 64
    + "mov $'Y', %al\nout %al, %dx\n"
    + "mov 0xFED00000, %ecx\n" * 64
    + "mov $'W', %al\nout %al, %dx"
)
MARKERS = {
    "X": "PVH entry",
    "A": "page tables begin",
    "B": "page tables built",
    "Z": "long mode, first C",
}


def boot(kernel: Path, accel: str, acpi: bool, until: bytes) -> dict[str, float]:
    """Boot a PVH ELF; host ms at which each marker byte / line first arrived."""
    master, slave = os.openpty()
    tty.setraw(slave)
    machine = f"q35,accel={accel}" + ("" if acpi else ",acpi=off")
    argv = [
        host.which(host.QEMU),
        "-machine",
        machine,
        "-m",
        "128",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-chardev",
        f"serial,id=c,path={os.ttyname(slave)}",
        "-serial",
        "chardev:c",
        "-bios",
        str(host.QBOOT),
        "-kernel",
        str(kernel),
    ]
    if accel == "kvm":
        argv += ["-cpu", KVM_DEFAULT_CPU]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    seen: dict[str, float] = {}
    buf = b""
    try:
        while until not in buf:
            if not select.select([master], [], [], 10)[0]:
                break
            buf += os.read(master, 4096)
            t = (time.monotonic() - t0) * 1000
            for key in [*MARKERS, "Y", "W", "pxOS", "@stage pci", "@stage ready"]:
                if key.encode() in buf and key not in seen:
                    seen[key] = t
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)
    return seen


def trivial_elf(tmp: Path, body: str = "") -> Path:
    name = {"": "t", LOOP: "loop", EXITS: "exits"}[body]
    src, obj, elf = tmp / f"{name}.S", tmp / f"{name}.o", tmp / f"{name}.elf"
    src.write_text(TRIVIAL.replace("LOOP", body))
    subprocess.run(["gcc", "-m32", "-c", str(src), "-o", str(obj)], check=True)
    subprocess.run(
        ["ld", "-m", "elf_i386", "-Ttext=0x100000", "-o", str(elf), str(obj)], check=True
    )
    return elf


def median_of(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=9)
    ap.add_argument(
        "--accel", default="kvm" if host.kvm().usable else "tcg", choices=("kvm", "tcg")
    )
    args = ap.parse_args()
    k = host.kvm()
    print(
        f"host: {host.version(host.QEMU)}; accel {args.accel}"
        f"{' (nested KVM)' if args.accel == 'kvm' and k.nested else ''}; "
        f"{args.runs} interleaved rounds, medians, host ms from the fork of QEMU\n"
    )
    with tempfile.TemporaryDirectory(prefix="hil-breakdown-") as tmp:
        tmp = Path(tmp)
        elf, loop, exits = trivial_elf(tmp), trivial_elf(tmp, LOOP), trivial_elf(tmp, EXITS)
        marked = image.build(
            image.ImageRecipe(defines=(("PXOS_BOOT_MARKERS", "1"),)),
            cache_root=tmp / "cache",
            budget=1 << 16,
        )
        shipped = image.build(image.ImageRecipe(), cache_root=tmp / "cache")
        # Interleaved rounds: each pxOS boot has its floor measured right before it, so
        # the ratios below are per round (a loaded shared machine drifts between blocks).
        rounds = []
        for _ in range(args.runs):
            rounds.append(
                {
                    "on": boot(elf, args.accel, True, b"X"),
                    "off": boot(elf, args.accel, False, b"X"),
                    "loop": boot(loop, args.accel, False, b"Y"),
                    "exits": boot(exits, args.accel, False, b"W"),
                    "marked": boot(marked.elf, args.accel, False, b"@stage ready"),
                    "shipped": boot(shipped.elf, args.accel, False, b"@stage ready"),
                }
            )
        col = lambda name: [r[name] for r in rounds]  # noqa: E731
        print("trivial PVH guest (one byte to COM1), first byte:")
        print(f"  ACPI tables on :   {median_of(col('on'), 'X'):7.1f} ms")
        print(f"  ACPI tables off:   {median_of(col('off'), 'X'):7.1f} ms")
        ms = statistics.median(r["Y"] - r["X"] for r in col("loop") if "X" in r and "Y" in r)
        print(
            f"  200,000 guest instructions (dec/jnz loop): {ms:.2f} ms = "
            f"{200_000 / max(ms, 0.01) * 1e3:.3g} instructions/s"
        )
        ex = [r for r in col("exits") if all(k in r for k in "XYW")]
        if ex:
            out = statistics.median(r["Y"] - r["X"] for r in ex) * 1e3 / 64
            mmio = statistics.median(r["W"] - r["Y"] for r in ex) * 1e3 / 64
            print(
                f"  one exit to QEMU: outb to COM1 {out:.1f} us, an MMIO read (HPET) "
                f"{mmio:.1f} us (64 of each)"
            )
        print("\nthe pxOS kernel, ACPI off (the PVH profiles), a build with markers:")
        prev = 0.0
        for key, label in [
            *MARKERS.items(),
            ("pxOS", "banner line"),
            ("@stage pci", "PCI enumerated"),
            ("@stage ready", "ready"),
        ]:
            t = median_of(col("marked"), key)
            if t is not None:
                print(f"  {label:<20} {t:7.1f} ms   (+{t - prev:5.1f})")
                prev = t
        ratios = sorted(
            r["shipped"]["@stage ready"] / r["off"]["X"]
            for r in rounds
            if "@stage ready" in r["shipped"] and "X" in r["off"]
        )
        ready = median_of(col("shipped"), "@stage ready")
        if ready is not None and ratios:
            print(
                f"\nthe shipped kernel (no markers): ready {ready:.1f} ms; ready / the trivial "
                f"guest's first byte (ACPI off), per round: median {statistics.median(ratios):.3f}"
                f" (min {ratios[0]:.3f}, max {ratios[-1]:.3f}, {len(ratios)} rounds)"
            )
        print(
            "\n(markers: one byte each, from a build with PXOS_BOOT_MARKERS; the shipped "
            "kernel has none.  Each round boots all five guests in turn.)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
