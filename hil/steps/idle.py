"""idle: measure CPU idle over a window (docs/metrics.md); lines printed meanwhile stay
available to the next step.

    - idle: 1.0
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import STEPS, Step, StepKind


@dataclass(frozen=True)
class Idle(Step):
    seconds: float
    kind = "idle"


@STEPS.register
class IdleKind(StepKind):
    name = "idle"

    def parse(self, f, common, ctx):
        seconds = f.positive("idle", example="idle: 1.0")
        if seconds is None:
            return None
        if seconds > 3600:
            f.error("idle", "an idle window is at most 3600 s.")
            return None
        # The window itself must fit into the step's time.
        timeout = max(common["timeout"] or 0, seconds + 5.0)
        return Idle(**{**common, "timeout": timeout}, seconds=seconds)

    def run(self, step, engine):
        engine.power.wait_started(5)
        probe = engine.idle_probe()
        first = probe.sample()
        engine.watch(
            step, lambda ln: False, "the idle window to end", seconds=step.seconds, consume=False
        )
        window = probe.window(first, probe.sample())
        engine.out.idle_windows.append(window)
        return (
            f"{window.idle * 100:.2f} % idle over {window.seconds:.3f} s "
            f"({window.method}), {window.wakeups_per_s:.1f} wake-ups/s"
        )
