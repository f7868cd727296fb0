"""Steps: one file per step kind (expect, lines, send, key, qmp, idle, exit, check,
json), registered with ``STEPS``; the engine that runs them is hil/steps/engine.py."""

from __future__ import annotations

from . import check, exit, expect, idle, jsondoc, key, lines, qmp, send  # noqa: F401  (each registers its kind)
from .base import COMMON, DEFAULT_TIMEOUT, STEPS, Step, StepContext, StepKind
from .check import Check
from .engine import Outcome, StepResult, StepRunner, explain_exit
from .exit import EXIT_NAMES, Exit
from .expect import RECORD_TYPES, Expect
from .idle import Idle
from .lines import Lines
from .patterns import parse_pattern
from .send import Send

__all__ = [
    "COMMON",
    "DEFAULT_TIMEOUT",
    "EXIT_NAMES",
    "RECORD_TYPES",
    "STEPS",
    "Check",
    "Exit",
    "Expect",
    "Idle",
    "Lines",
    "Outcome",
    "Send",
    "Step",
    "StepContext",
    "StepKind",
    "StepResult",
    "StepRunner",
    "explain_exit",
    "parse_pattern",
]
