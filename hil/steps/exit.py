"""exit: wait for QEMU to exit with a status (a number or shutdown/panic, docs/console.md).

- exit: shutdown
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import STEPS, Step, StepKind

EXIT_NAMES = {"shutdown": 1, "panic": 63}  # docs/console.md, "Exit codes"


@dataclass(frozen=True)
class Exit(Step):
    status: int
    kind = "exit"


@STEPS.register
class ExitKind(StepKind):
    name = "exit"

    def parse(self, f, common, ctx):
        raw = f.raw("exit")
        if isinstance(raw, str) and raw in EXIT_NAMES:
            return Exit(**common, status=EXIT_NAMES[raw])
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 255:
            return Exit(**common, status=raw)
        shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:37] + "..."
        f.error(
            "exit",
            f"{shown} is not an exit status; write a QEMU exit status (0-255) or one "
            f"of {', '.join(EXIT_NAMES)} (docs/console.md).",
        )
        return None

    def run(self, step, engine):
        from .engine import Exited

        try:
            engine.watch(
                step, lambda ln: False, f"QEMU to exit with status {step.status}", exit_ok=True
            )
        except Exited as e:
            if e.status == step.status:
                return f"QEMU exited with status {e.status}: {e.sentence}"
            engine.fail(
                step,
                f"QEMU exited with status {e.status}, expected {step.status}: {e.sentence}",
                "unexpected-exit",
                f"exit {step.status}",
            )
        raise AssertionError("unreachable")
