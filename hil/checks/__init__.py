"""Checks: one file per check kind, registered with ``CHECKS`` (hil/checks/base.py)."""

from __future__ import annotations

from . import blocksums, disk, gpu_reference, passthrough, pcap, pci  # noqa: F401  (each registers its kind)
from .base import CHECKS, CheckKind


# Sorted: the names an error message lists must not depend on which module imported
# which first (passthrough imports pci's listing wait, which once reordered them).
def live_names() -> list[str]:
    return sorted(k.name for k in CHECKS.kinds() if k.live)


def post_names() -> list[str]:
    return sorted(k.name for k in CHECKS.kinds() if k.post)


__all__ = ["CHECKS", "CheckKind", "live_names", "post_names"]
