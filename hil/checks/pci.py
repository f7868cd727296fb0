"""pci (live): the kernel's PCI listing equals what QEMU built (QMP query-pci), and every
device the plan attached shows up with the IDs its kind expects.

    - check: pci
"""

from __future__ import annotations

from .. import pcicheck
from .base import CHECKS, CheckKind


def await_listing(step, engine) -> None:
    """Wait for the kernel's PCI listing, which ends with '@stage pci'; an earlier step
    may already have read it (then nothing is waited for)."""
    if not any(ln.text.startswith("@stage pci") for ln in engine.console.lines):
        engine.watch(
            step,
            lambda ln: ln.text.startswith("@stage pci"),
            "'@stage pci' (the end of the kernel's PCI listing)",
            consume=False,
        )


@CHECKS.register
class PciCheck(CheckKind):
    name = "pci"
    live = True

    def run_live(self, step, engine) -> str:
        await_listing(step, engine)
        engine.power.wait_started(5)
        kernel = pcicheck.parse_kernel(engine.console.lines)
        qemu = pcicheck.parse_qmp(engine.monitor.cmd("query-pci"))
        problems = pcicheck.compare(kernel, qemu)
        if engine.plan is not None:
            problems += pcicheck.missing(kernel, _expected(engine.plan))
        if problems:
            engine.fail(
                step,
                "the kernel's PCI listing differs from QMP query-pci: " + "; ".join(problems),
                "pci-mismatch",
                "check: pci",
            )
        return f"{len(kernel)} functions agree with QMP query-pci"


def _expected(plan) -> list:
    from ..devices import kind_of

    return [pid for spec in plan.devices for pid in kind_of(spec).pci_ids(spec)]
