"""The step engine: runs a scenario's steps against a live machine and decides the verdict.

Every wait goes through ``watch``: it offers console lines until the step is satisfied,
checking each line against the scenario's ``fail_on`` patterns (an exception report fails
the run the moment it appears), the step's own timeout and the scenario's overall
deadline.  When QEMU exits, the exit is explained (kernel shutdown, exception vector,
panic, triple fault, signal) from its exit status, its QMP events and its log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import Console, ConsoleClosed, Line
from ..errors import InfraError
from ..metrics import IdleProbe, IdleWindow
from ..pattern import Pattern
from ..target import Monitor, Power
from ..verdict import ERROR, FAIL, TIMEOUT, StepFailed, Verdict
from .base import STEPS, Step

if TYPE_CHECKING:
    from ..scenario import Scenario

EVIDENCE_LINES = 20


@dataclass
class StepResult:
    step: Step
    status: str = "not run"  # passed | failed | timeout | not run
    started: float = 0.0  # seconds since launch
    duration: float = 0.0
    detail: str = ""

    def to_json(self) -> dict:
        s = self.step
        return {
            "index": s.index,
            "kind": s.kind,
            "name": s.name,
            "line": s.line,
            "status": self.status,
            "started_s": round(self.started, 6),
            "duration_s": round(self.duration, 6),
            "detail": self.detail,
        }


@dataclass
class Outcome:
    results: list[StepResult]
    recorded: dict[str, float | str] = field(default_factory=dict)
    idle_windows: list[IdleWindow] = field(default_factory=list)
    qemu_exit: int | None = None
    exit_explained: str = ""


def explain_exit(status: int | None, events: list[dict], qemu_log: Path) -> tuple[str, str]:
    """(category, sentence) for a QEMU exit status; docs/console.md has the code table."""
    reasons = [e.get("data", {}).get("reason") for e in events if e.get("event") == "SHUTDOWN"]
    log = ""
    try:
        log = qemu_log.read_text(errors="replace")
    except OSError:
        pass
    if status is None:
        return "unexpected-exit", "QEMU closed the console but is still running"
    if status < 0:
        return "unexpected-exit", f"QEMU was killed by signal {-status}"
    if "Triple fault" in log or "guest-reset" in reasons:
        what = "triple fault" if "Triple fault" in log else "guest reset"
        return "triple-fault", (
            f"the guest caused a {what} (QEMU exit status {status}; "
            "-no-reboot turns the reset into an exit)"
        )
    if status == 1:
        return "shutdown", "the kernel shut down cleanly (isa-debug-exit code 0x00, status 1)"
    if status == 63:
        return "panic", "the kernel panicked (isa-debug-exit code 0x1f, status 63)"
    if status & 1 and 0x20 <= status >> 1 < 0x40:
        vec = (status >> 1) - 0x20
        return "guest-exception", (
            f"CPU exception vector {vec} ({_VECTORS.get(vec, '?')}) "
            f"reported by the kernel (QEMU exit status {status})"
        )
    if reasons:
        return (
            "unexpected-exit",
            f"QEMU shut down ({', '.join(map(str, reasons))}), status {status}",
        )
    return "unexpected-exit", f"QEMU exited with status {status}"


_VECTORS = {
    0: "#DE divide error",
    1: "#DB",
    2: "NMI",
    3: "#BP",
    4: "#OF",
    5: "#BR",
    6: "#UD invalid opcode",
    7: "#NM",
    8: "#DF double fault",
    10: "#TS",
    11: "#NP",
    12: "#SS",
    13: "#GP general protection",
    14: "#PF page fault",
    16: "#MF",
    17: "#AC",
    18: "#MC",
    19: "#XM",
    20: "#VE",
    21: "#CP",
}
_EXC_LINE = re.compile(r"^!EXC vec=([0-9a-f]+)")


class StepRunner:
    """Runs a scenario's steps against a live machine, through its protocols."""

    def __init__(
        self,
        scenario: Scenario,
        power: Power,
        console: Console,
        accel: str,
        monitor: Monitor | None = None,
        on_step: Callable[[StepResult], None] = lambda r: None,
        watchdogs: list[Callable[[], None]] | None = None,
        plan=None,
    ):
        self.sc = scenario
        self.plan = plan
        # Called between console reads; each raises (InfraError) if a helper process of
        # the machine -- the vGPU bridge -- died.
        self.watchdogs = watchdogs or []
        self.power = power
        self.monitor = monitor
        self.console = console
        self.accel = accel
        self.on_step = on_step
        self.deadline = power.launched + scenario.timeout
        self.out = Outcome([StepResult(s) for s in scenario.steps])
        self._probe: IdleProbe | None = None
        # Console lines before ``cursor`` were consumed by a step that matched them; the
        # lines after it stay available to the next step whatever ran in between (an
        # idle window, a send, a check only look).  ``checked``: lines fail_on has seen.
        self.cursor = 0
        self.checked = 0

    # -- the driver -----------------------------------------------------------
    def run(self) -> Outcome:
        """Runs every step; raises StepFailed with the verdict on the first failure."""
        for res in self.out.results:
            res.started = self.console.now()
            res.status = "running"
            self.on_step(res)
            try:
                res.detail = STEPS[res.step.kind].run(res.step, self) or ""
                res.status = "passed"
            except StepFailed as f:
                res.status = "timeout" if f.verdict.outcome == TIMEOUT else "failed"
                res.detail = f.verdict.reason
                raise
            finally:
                res.duration = self.console.now() - res.started
                self.on_step(res)
        return self.out

    def idle_probe(self) -> IdleProbe:
        if self._probe is None:
            self._probe = IdleProbe(self.monitor, self.power.pid, self.accel)
        return self._probe

    # -- waiting on the console --------------------------------------------------
    def watch(
        self,
        step: Step,
        accept: Callable[[Line], bool],
        waiting_for: str,
        seconds: float | None = None,
        consume: bool = True,
        exit_ok: bool = False,
    ) -> Line | None:
        """Offer lines to ``accept`` -- first those not yet consumed, then new ones --
        until it says yes; ``seconds`` set means a fixed window (returns None when it
        ends).  ``consume``: the accepted line and those before it are used up.
        fail_on, timeouts and QEMU's exit end it early (``exit_ok``: the exit is raised
        as ``Exited`` for the caller to judge, instead of failing the step)."""
        start = time.monotonic()
        step_end = start + (seconds if seconds is not None else step.timeout)
        end = min(step_end, self.deadline)
        i = self.cursor
        while True:
            if i < len(self.console.lines):
                line = self.console.lines[i]
            else:
                left = end - time.monotonic()
                if left <= 0:
                    if seconds is not None and end == step_end:
                        return None
                    self._timed_out(step, waiting_for, overall=end < step_end)
                self.power.release_console()
                for check in self.watchdogs:
                    check()
                try:
                    line = self.console.read_line(min(left, 0.5))
                except ConsoleClosed:
                    self._machine_gone(step, waiting_for, exit_ok)
                if line is None:
                    continue
            i += 1
            if accept(line):  # the line a step waits for wins over fail_on
                self.checked = max(self.checked, i)
                if consume:
                    self.cursor = i
                return line
            if i > self.checked:
                self.checked = i
                for pat in self.sc.infra_on:
                    if pat.search(line.text):
                        self.fail(
                            step,
                            f"an infra_on pattern matched, so the test bench failed, not the "
                            f"system under test: {line.text!r} at {line.t * 1000:.1f} ms",
                            "infra",
                            str(pat),
                            ERROR,
                        )
                for pat in self.sc.fail_on:
                    if pat.search(line.text):
                        self._fail_on(step, pat, line)

    # -- failures ---------------------------------------------------------------
    def _evidence(self) -> list[str]:
        return [f"{ln.t * 1000:11.3f} {ln.text}" for ln in self.console.tail(EVIDENCE_LINES)]

    def fail(
        self, step: Step, reason: str, category: str, pattern: str, outcome: str = FAIL
    ) -> None:
        raise StepFailed(
            Verdict(
                outcome,
                reason,
                category,
                step.index,
                step.label(),
                step.line,
                pattern,
                self._evidence(),
            )
        )

    def _timed_out(self, step: Step, waiting_for: str, overall: bool) -> None:
        if overall:
            self.fail(
                step,
                f"the scenario's {self.sc.timeout:g} s timeout expired while "
                f"waiting for {waiting_for}",
                "timeout",
                waiting_for,
                TIMEOUT,
            )
        self.fail(
            step,
            f"no {waiting_for.removeprefix('a ')} within {step.timeout:g} s"
            if waiting_for.startswith("a line")
            else f"timed out after {step.timeout:g} s waiting for {waiting_for}",
            "expectation",
            waiting_for,
        )

    def _fail_on(self, step: Step, pat: Pattern, line: Line) -> None:
        # Let the rest of a multi-line report arrive, then explain how QEMU ended.
        self.console.drain(0.3)
        status = self.power.wait_exit(1.0)
        extra = ""
        if status is not None:
            cat, sentence = explain_exit(status, self._events(), self.power.log_path)
            extra = f"; {sentence}"
        m = _EXC_LINE.match(line.text)
        category = "guest-exception" if m else "fail_on"
        what = (
            f"guest CPU exception vector {int(m[1], 16)} ({_VECTORS.get(int(m[1], 16), '?')})"
            if m
            else "a fail_on pattern matched"
        )
        self.fail(
            step, f"{what}: {line.text!r} at {line.t * 1000:.1f} ms{extra}", category, str(pat)
        )

    def _events(self) -> list[dict]:
        return [e for _, e in self.monitor.events()] if self.monitor else []

    def _machine_gone(self, step: Step, waiting_for: str, exit_ok: bool) -> None:
        status = self.power.wait_exit(2.0)
        if status is None:
            raise InfraError("the serial console closed but QEMU is still running")
        if not self.console.lines and self.power.stderr_tail():
            # Nothing from the guest, a complaint from QEMU: it never got going
            # (bad option, KVM unusable, missing file).  Not the system under test.
            raise InfraError(
                f"QEMU exited during start-up (status {status}): {self.power.stderr_tail()}"
            )
        category, sentence = explain_exit(status, self._events(), self.power.log_path)
        self.out.qemu_exit = status
        self.out.exit_explained = sentence
        if exit_ok:
            raise Exited(status, sentence)
        self.fail(
            step, f"QEMU exited while waiting for {waiting_for}: {sentence}", category, waiting_for
        )


class Exited(Exception):
    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status, self.sentence = status, sentence
