"""What the user sees while a run goes on: build, boot, steps, verdict.

Three modes: ``live`` (a terminal: a status line rewritten in place, finished events
kept), ``plain`` (a log or pipe: one line per event) and ``quiet`` (CI: only the verdict,
and the evidence when a run did not pass).  Progress goes to stderr; the verdict to stdout.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .verdict import PASS, Verdict

_MARK = {
    "pass": "PASS",
    "fail": "FAIL",
    "error": "ERROR",
    "timeout": "TIMEOUT",
    "interrupted": "INTERRUPTED",
}


class Progress:
    def __init__(self, mode: str = "plain", out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.mode = mode
        self.out, self.err = out, err
        self._status_shown = False
        self.prefix = ""

    @classmethod
    def auto(cls, quiet: bool) -> Progress:
        if quiet:
            return cls("quiet")
        return cls("live" if sys.stderr.isatty() else "plain")

    # -- primitives -------------------------------------------------------------
    def _event(self, text: str) -> None:
        if self.mode == "quiet":
            return
        if self._status_shown:
            self.err.write("\r\x1b[K")
            self._status_shown = False
        self.err.write(f"{self.prefix}{text}\n")
        self.err.flush()

    def _status(self, text: str, transient: bool = False) -> None:
        """A state that the next event replaces; in a log only lasting ones are kept."""
        if self.mode == "live":
            self.err.write(f"\r\x1b[K{self.prefix}{text}"[:200])
            self.err.flush()
            self._status_shown = True
        elif self.mode == "plain" and not transient:
            self._event(text)

    # -- events -----------------------------------------------------------------
    def start(self, scenario: str, profile: str, accel: str, why: str, run_dir: str) -> None:
        self.prefix = f"[{scenario}] " if self.mode != "live" else ""
        self._event(f"{scenario}: profile {profile}, accel {accel} ({why})")
        self._event(f"results in {run_dir}")

    def build(self, message: str) -> None:
        self._status(f"build: {message}")

    def built(self, message: str) -> None:
        self._event(f"image: {message}")

    def launched(self) -> None:
        self._status("boot: QEMU launched, waiting for the console", transient=True)

    def console(self, text: str, t: float) -> None:
        if text.startswith("@stage "):
            self._status(f"boot: {text.split(' tsc=')[0][7:]} at {t * 1000:.1f} ms")

    def step(self, res) -> None:
        s = res.step
        n = f"step {s.index + 1}"
        what = s.kind + (f" ({s.name})" if s.name else "")
        if res.status == "running":
            self._status(f"{n} {what} ...", transient=True)
        elif res.status == "passed":
            self._event(f"{n} {what}: ok ({res.duration:.2f} s) {res.detail[:100]}")
        else:
            self._event(f"{n} {what}: {res.status.upper()}")

    def finished(
        self, scenario: str, verdict: Verdict, metrics: dict, run_dir: str, scenario_file: str
    ) -> None:
        if self._status_shown:
            self.err.write("\r\x1b[K")
            self._status_shown = False
        self.prefix = ""
        head = f"{_MARK[verdict.outcome]:<5} {scenario}: {verdict.reason}"
        lines = [head]
        if verdict.outcome != PASS:
            if verdict.step is not None:
                where = f"{scenario_file}:{verdict.step_line}" if verdict.step_line else ""
                lines.append(f"  at {verdict.step_label}" + (f" ({where})" if where else ""))
            if verdict.pattern:
                lines.append(f"  expected: {verdict.pattern}")
            if verdict.evidence:
                lines.append(f"  last {len(verdict.evidence)} console lines (ms since launch):")
                lines += [f"    {e}" for e in verdict.evidence]
        shown = {k: v for k, v in metrics.items() if k in ("boot_ms", "cpu_idle")}
        if shown:
            lines.append("  " + ", ".join(f"{k}={v:g}" for k, v in shown.items()))
        lines.append(f"  results: {run_dir}")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
