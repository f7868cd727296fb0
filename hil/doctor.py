"""`hil doctor`: what this host has, and what each missing piece disables.

Exit status 0 when `hil run` can work (QEMU and the build tools are present), 3 (an
infrastructure error) otherwise.  A missing KVM or wgpu adapter is reported but is not
fatal: TCG and the NumPy executor still work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TextIO

from . import host
from .errors import EXIT_INFRA, EXIT_PASS, HilError

_ADAPTER_PROBE = """
import json, wgpu
a = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
print(json.dumps({k: a.info[k] for k in ("device", "vendor", "adapter_type", "backend_type",
                                         "description")}))
"""


def wgpu_adapter(timeout: float = 60.0) -> tuple[dict | None, str]:
    """(adapter info, problem) -- probed in a child process so a broken Vulkan driver
    cannot take hil down with it."""
    try:
        p = subprocess.run(
            [sys.executable, "-c", _ADAPTER_PROBE], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, f"probing for an adapter took over {timeout:.0f} s"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no message"])[-1]
        return None, last
    return json.loads(p.stdout.strip().splitlines()[-1]), ""


def doctor(out: TextIO) -> int:
    fatal = False
    rows: list[tuple[str, str, str]] = []
    for prog, (pkg, loses) in host.TOOLS.items():
        v = host.version(prog)
        prebuilt = os.environ.get(host.PREBUILT_ENV)
        if v is None and prebuilt and prog in host.BUILD_TOOLS:
            rows.append((prog, "not needed", f"prebuilt images from {prebuilt}"))
        elif v is None:
            rows.append((prog, "MISSING", f"install {pkg}; without it: {loses}"))
            fatal |= prog != "qemu-img"
        else:
            rows.append((prog, "ok", v))
    if host.QBOOT.exists():
        rows.append(("qboot.rom", "ok", str(host.QBOOT)))
    else:
        rows.append(
            (
                "qboot.rom",
                "MISSING",
                "install qemu-system-data; without it: the PVH "
                "boot path (fast boot) is unavailable",
            )
        )
    if host.which("setpriv") is None:
        rows.append(
            (
                "setpriv",
                "MISSING",
                "install util-linux; without it a killed hil may leave QEMU running",
            )
        )
    from . import pattern

    if pattern.re2 is None:
        rows.append(("google-re2", "MISSING", pattern.MISSING))
        fatal = True
    k = host.kvm()
    if k.usable:
        note = k.reason + (
            "; nested (this host is a VM): BIOS code is slow under KVM here, "
            "accel 'auto' picks TCG for the BIOS path"
            if k.nested
            else ""
        )
        rows.append(("kvm", "ok", note))
    else:
        rows.append(
            ("kvm", "unusable", f"{k.reason}; profiles with accel kvm cannot run, 'auto' uses TCG")
        )
    info, problem = wgpu_adapter()
    if info:
        rows.append(
            (
                "wgpu adapter",
                "ok",
                f"{info['device']} ({info['adapter_type']}, {info['backend_type']})",
            )
        )
    else:
        rows.append(
            (
                "wgpu adapter",
                "MISSING",
                f"{problem}; without it the wgpu executor and "
                "the virtual GPU are unavailable (install mesa-vulkan-drivers for "
                "lavapipe)",
            )
        )
    width = max(len(r[0]) for r in rows)
    for name, state, note in rows:
        out.write(f"{name:<{width}}  {state:<8}  {note}\n")
    out.write("\npassthrough (VFIO, docs/passthrough.md):\n")
    try:
        from .vfio import doctor_report

        for line in doctor_report():
            out.write(f"  {line}\n")
    except (OSError, HilError) as e:  # a host without PCI sysfs: say so, go on
        out.write(f"  cannot read the host's PCI devices: {e}\n")
    out.write("\nhil run: " + ("NOT possible (see MISSING above)\n" if fatal else "ready\n"))
    return EXIT_INFRA if fatal else EXIT_PASS
