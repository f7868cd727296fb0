"""send: type one line on the serial console (a carriage return is added).

- send: stats
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import STEPS, Step, StepKind


@dataclass(frozen=True)
class Send(Step):
    text: str
    kind = "send"


@STEPS.register
class SendKind(StepKind):
    name = "send"

    def parse(self, f, common, ctx):
        text = f.get("send", str, example="send: stats")
        if text is not None and any(c in text for c in "\n\r\0"):
            f.error("send", "send one line at a time (the newline is added); use several steps.")
            return None
        if text is not None and len(text) > 4096:
            f.error("send", "a line to send is at most 4096 characters.")
            return None
        return Send(**common, text=text) if text is not None else None

    def run(self, step, engine):
        engine.console.send_line(step.text)
        return f"sent {step.text!r}"
