"""Metrics: boot time from the console's stage markers, CPU idle from the hypervisor.

How each figure is measured is documented in docs/metrics.md; the catalogue below is the
single list of metric names (scenario validation and the docs table both come from it).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("boot", "lmode", "kernel", "pci", "ready")  # docs/console.md, in boot order

CATALOGUE: dict[str, str] = {
    "boot_ms": "host ms from QEMU launch to the console line matching the scenario's "
    "`ready` pattern",
    "first_output_ms": "host ms from QEMU launch to the first complete console line",
    **{
        f"stage_ms.{s}": f"host ms from QEMU launch to `@stage {s}` (arrival of the line; "
        "stages reported after the fact are back-dated by their TSC delta)"
        for s in STAGES
    },
    **{
        f"guest_us.{s}": f"guest µs from the first stage marker to `@stage {s}` "
        "(TSC delta / `@tsc khz`)"
        for s in STAGES
    },
    "tsc_khz": "guest TSC frequency the kernel measured against the PIT (`@tsc khz=`)",
    "cpu_idle": "fraction of wall time the least idle vCPU spent halted during `idle` "
    "windows (worst window)",
    "wakeups_per_s": "halt exits (KVM) or scheduler wake-ups of the vCPU thread (TCG) per "
    "second during `idle` windows (worst window)",
}


def catalogue() -> dict[str, str]:
    """Every metric name: the run's own, then those each device kind produces."""
    from .devices import DEVICES

    out = dict(CATALOGUE)
    for kind in DEVICES.kinds():
        out.update(kind.metrics)
    return out


def names() -> list[str]:
    return list(catalogue())


def is_known(name: str) -> bool:
    return name in catalogue()


# ---------------------------------------------------------------- boot time

_STAGE = re.compile(r"^@stage (\w+) tsc=([0-9a-f]+)\s*$")
_TSC = re.compile(r"^@tsc khz=([0-9a-f]+)\s*$")


def boot_metrics(lines, ready) -> dict[str, float]:
    """Boot-time metrics from console lines (objects with .t seconds and .text)."""
    out: dict[str, float] = {}
    stages: dict[str, tuple[float, int]] = {}
    khz = None
    for ln in lines:
        if "first_output_ms" not in out:
            out["first_output_ms"] = ln.t * 1000
        if "boot_ms" not in out and ready.search(ln.text):
            out["boot_ms"] = ln.t * 1000
        if m := _STAGE.match(ln.text):
            stages.setdefault(m[1], (ln.t, int(m[2], 16)))
        elif m := _TSC.match(ln.text):
            khz = int(m[1], 16)
    if khz:
        out["tsc_khz"] = float(khz)
        first = next((stages[s][1] for s in STAGES if s in stages), None)
        for name, (_, tsc) in stages.items():
            out[f"guest_us.{name}"] = (tsc - first) * 1000 / khz
    for name, (t, tsc) in stages.items():
        # The boot sector cannot print: the kernel reports its stages ('boot', 'lmode' on
        # the BIOS path) after the fact.  Back-date any stage that happened before the
        # live 'kernel' line by the guest's TSC delta (docs/metrics.md).
        if khz and "kernel" in stages and tsc < stages["kernel"][1]:
            t = stages["kernel"][0] - (stages["kernel"][1] - tsc) / (khz * 1000)
        out[f"stage_ms.{name}"] = t * 1000
    return {k: round(v, 3) for k, v in out.items()}


# ---------------------------------------------------------------- CPU idle


@dataclass
class IdleWindow:
    """The result of one `idle` step."""

    method: str  # kvm-halt-wait | tcg-thread-time
    seconds: float  # measured wall time of the window
    vcpus: list[dict] = field(default_factory=list)  # per vCPU: idle, wakeups, raw deltas

    @property
    def idle(self) -> float:
        return min(v["idle"] for v in self.vcpus)

    @property
    def wakeups_per_s(self) -> float:
        return max(v["wakeups"] for v in self.vcpus) / self.seconds

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "seconds": round(self.seconds, 6),
            "idle": round(self.idle, 6),
            "wakeups_per_s": round(self.wakeups_per_s, 3),
            "vcpus": self.vcpus,
        }


class IdleProbe:
    """Samples per-vCPU halted time.  Under KVM: QMP ``query-stats`` (``halt_wait_ns``,
    ``halt_exits``); under TCG (where query-stats is empty) the vCPU threads' scheduler
    statistics from /proc/<pid>/task/<tid>/schedstat: halted = wall - (time on a CPU +
    time waiting on a run queue).  A thread that waits for a CPU wants to run: on a
    loaded host a spinning guest must still read busy, not "idle" for want of a CPU."""

    def __init__(self, qmp, pid: int, accel: str):
        self.qmp = qmp
        self.pid = pid
        self.method = (
            "kvm-halt-wait" if accel == "kvm" and self._kvm_sample() else "tcg-thread-time"
        )
        if self.method == "tcg-thread-time":
            cpus = qmp.cmd("query-cpus-fast")
            self.threads = [c["thread-id"] for c in cpus]

    def _kvm_sample(self) -> dict[str, tuple[int, int]]:
        res = self.qmp.cmd(
            "query-stats",
            target="vcpu",
            providers=[{"provider": "kvm", "names": ["halt_wait_ns", "halt_exits"]}],
        )
        out = {}
        for vcpu in res:
            stats = {s["name"]: s["value"] for s in vcpu["stats"]}
            if "halt_wait_ns" in stats:
                out[vcpu["qom-path"]] = (stats["halt_wait_ns"], stats.get("halt_exits", 0))
        return out

    def _thread_sample(self) -> dict[str, tuple[int, int]]:
        out = {}
        for tid in self.threads:
            fields = Path(f"/proc/{self.pid}/task/{tid}/schedstat").read_text().split()
            # ns on a CPU + ns runnable but waiting, timeslices, ns waiting
            out[str(tid)] = (int(fields[0]) + int(fields[1]), int(fields[2]), int(fields[1]))
        return out

    def sample(self) -> tuple[float, dict]:
        t = time.monotonic()
        data = self._kvm_sample() if self.method == "kvm-halt-wait" else self._thread_sample()
        return t, data

    def window(self, start: tuple[float, dict], end: tuple[float, dict]) -> IdleWindow:
        (t0, a), (t1, b) = start, end
        wall_ns = (t1 - t0) * 1e9
        vcpus = []
        for key in a:
            d_main, d_count = b[key][0] - a[key][0], b[key][1] - a[key][1]
            if self.method == "kvm-halt-wait":
                idle = d_main / wall_ns
                vcpus.append(
                    {
                        "vcpu": key,
                        "idle": round(min(idle, 1.0), 6),
                        "wakeups": d_count,
                        "halt_wait_ns": d_main,
                    }
                )
            else:
                d_wait = b[key][2] - a[key][2]
                idle = 1.0 - d_main / wall_ns
                vcpus.append(
                    {
                        "vcpu": key,
                        "idle": round(max(idle, 0.0), 6),
                        "wakeups": d_count,
                        "cpu_ns": d_main - d_wait,
                        "runqueue_wait_ns": d_wait,
                    }
                )
        return IdleWindow(self.method, t1 - t0, vcpus)


def doc_table() -> str:
    """The metric table of docs/metrics.md (tests keep the doc equal to this)."""
    rows = ["| metric | meaning |", "|---|---|"]
    rows += [f"| `{name}` | {text} |" for name, text in catalogue().items()]
    return "\n".join(rows)
