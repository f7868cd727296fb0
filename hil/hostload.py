"""How busy the host was: load average and steal time, read from /proc at a run's start
and end (issue 18).  A metric that moved while the host was loaded (other QEMUs on a
shared lab host, a hypervisor stealing the VM's CPUs) is suspect; the nightly report
shows these beside every metric change.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    t: float  # monotonic
    load1: float
    steal: int  # jiffies, all CPUs (/proc/stat "cpu" line, 8th value)
    total: int  # jiffies, all CPUs, every state


def sample() -> Sample | None:
    try:
        load1 = os.getloadavg()[0]
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    steal = values[7] if len(values) > 7 else 0
    return Sample(time.monotonic(), round(load1, 2), steal, sum(values[:8]))


def metrics(start: Sample | None, end: Sample | None) -> dict[str, float]:
    """``host.load1_start``, ``host.load1_end`` and ``host.steal_pct`` over the run."""
    if start is None or end is None:
        return {}
    total = end.total - start.total
    out = {"host.load1_start": start.load1, "host.load1_end": end.load1}
    if total > 0:
        out["host.steal_pct"] = round(100 * (end.steal - start.steal) / total, 2)
    return out


CATALOGUE = {
    "host.load1_start": "the host's 1-minute load average when the run started (/proc/loadavg)",
    "host.load1_end": "the host's 1-minute load average when the run ended",
    "host.steal_pct": "CPU time the hypervisor stole from this host during the run, % of all "
    "CPU time (/proc/stat)",
}
