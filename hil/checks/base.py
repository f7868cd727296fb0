"""What a check kind is.  A check judges something the steps cannot see line by line:

* a *live* check runs as a step (``- check: pci``) against the running machine, through
  the engine's protocols (console, monitor), and fails the step like any other;
* a *post-run* check runs after the machine has stopped, on what the run left (the
  trace, disk images, pcaps), and returns a Finding that hil.judge turns into the
  verdict.  Device kinds ask for theirs (the vGPU's ``gpu-reference``); a scenario lists
  more under ``checks:``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..devices.base import AfterContext, Finding
from ..registry import Registry
from ..yamlsrc import Fields

CHECKS: Registry = Registry("check kind")


class CheckKind:
    name: ClassVar[str]
    live: ClassVar[bool] = False  # may run as a step
    post: ClassVar[bool] = False  # may run after the run
    keys: ClassVar[tuple[str, ...]] = ()  # its keys under ``checks: - <name>: {...}``

    def parse(self, f: Fields, ctx) -> Any | None:
        """A ``checks:`` entry -> its spec (default: no options)."""
        return {}

    def run_live(self, step, engine) -> str:
        raise NotImplementedError

    def run_post(self, spec: Any, ctx: AfterContext) -> Finding:
        raise NotImplementedError
