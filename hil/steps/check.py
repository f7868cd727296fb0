"""check: run a live check kind (hil/checks/) against the running machine.

- check: pci          # the kernel's PCI listing equals QMP query-pci
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import STEPS, Step, StepKind


@dataclass(frozen=True)
class Check(Step):
    what: str
    kind = "check"


@STEPS.register
class CheckKind(StepKind):
    name = "check"

    def parse(self, f, common, ctx):
        # Imported here, not at the top: hil.checks -> hil.devices -> hil.steps would
        # otherwise be a cycle when hil.scenario is the first module imported.
        from ..checks import live_names

        what = f.choice("check", live_names())
        return Check(**common, what=what) if what else None

    def run(self, step, engine):
        from ..checks import CHECKS

        return CHECKS[step.what].run_live(step, engine)
