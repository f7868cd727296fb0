"""What a step kind is: its YAML form (parse) and what it does on a live machine (run).

A step kind is one file in hil/steps/ that defines its step dataclass and registers its
kind class with ``STEPS``.  ``run`` gets the engine (hil/steps/engine.py), which offers
``watch`` (read console lines until one is accepted, with fail_on and the timeouts
enforced), ``fail``, and the machine's protocols: ``console``, ``power``, ``monitor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..registry import Registry
from ..yamlsrc import Fields, Problems

STEPS: Registry = Registry("step kind")
COMMON = ("name", "timeout")
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Step:
    index: int  # 0-based position in steps
    line: int | None  # line in the scenario file
    name: str
    timeout: float
    kind: ClassVar[str] = "step"

    def label(self) -> str:
        return f"step {self.index + 1} ({self.name})" if self.name else f"step {self.index + 1}"


@dataclass(frozen=True)
class StepContext:
    """What a kind's ``parse`` may need besides its own mapping."""

    problems: Problems
    base_dir: Any  # Path of the scenario's directory


class StepKind:
    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]] = ()  # its keys besides its own name, name and timeout

    def parse(self, f: Fields, common: dict, ctx: StepContext) -> Step | None:
        raise NotImplementedError

    def run(self, step: Step, engine) -> str:
        """Do the step; return the detail line for the record, or raise via engine.fail."""
        raise NotImplementedError

    def recorded(self, step: Step) -> set[str]:
        """Names of the metrics this step records (for validating metric limits)."""
        return set()
