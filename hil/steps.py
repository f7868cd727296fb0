"""The step engine: runs a scenario's steps against a live machine and decides the verdict.

Every wait goes through ``_watch``: it reads console lines until the step is satisfied,
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

from . import pcicheck
from .console import Console, ConsoleClosed, Line
from .errors import InfraError
from .machine import QemuMachine
from .metrics import IdleProbe, IdleWindow
from .scenario import RECORD_TYPES, Check, Exit, Expect, Idle, Lines, Pattern, Scenario, Send, Step
from .verdict import FAIL, TIMEOUT, StepFailed, Verdict

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
    def __init__(
        self,
        scenario: Scenario,
        machine: QemuMachine,
        console: Console,
        accel: str,
        on_step: Callable[[StepResult], None] = lambda r: None,
        watchdogs: list[Callable[[], None]] | None = None,
    ):
        self.sc = scenario
        # Called between console reads; each raises (InfraError) if a helper process of
        # the machine -- the vGPU bridge -- died.
        self.watchdogs = watchdogs or []
        self.m = machine
        self.c = console
        self.accel = accel
        self.on_step = on_step
        self.deadline = machine.launched + scenario.timeout
        self.out = Outcome([StepResult(s) for s in scenario.steps])
        self._probe: IdleProbe | None = None
        self._current: StepResult | None = None

    # -- the driver -----------------------------------------------------------
    def run(self) -> Outcome:
        """Runs every step; raises StepFailed with the verdict on the first failure."""
        for res in self.out.results:
            self._current = res
            res.started = self.c.now()
            res.status = "running"
            self.on_step(res)
            try:
                res.detail = self._dispatch(res.step) or ""
                res.status = "passed"
            except StepFailed as f:
                res.status = "timeout" if f.verdict.outcome == TIMEOUT else "failed"
                res.detail = f.verdict.reason
                raise
            finally:
                res.duration = self.c.now() - res.started
                self.on_step(res)
        return self.out

    def _dispatch(self, step: Step) -> str | None:
        match step:
            case Expect():
                return self._expect(step)
            case Lines():
                return self._lines(step)
            case Send():
                self.c.send_line(step.text)
                return f"sent {step.text!r}"
            case Idle():
                return self._idle(step)
            case Exit():
                return self._exit(step)
            case Check():
                return self._check_pci(step)
        raise AssertionError(step)

    # -- waiting on the console --------------------------------------------------
    def _watch(
        self,
        step: Step,
        accept: Callable[[Line], bool],
        waiting_for: str,
        seconds: float | None = None,
    ) -> Line | None:
        """Read lines until ``accept`` says yes; ``seconds`` set means a fixed window
        (returns None when it ends).  fail_on, timeouts and QEMU's exit end it early."""
        start = time.monotonic()
        step_end = start + (seconds if seconds is not None else step.timeout)
        end = min(step_end, self.deadline)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                if seconds is not None and end == step_end:
                    return None
                self._timed_out(step, waiting_for, overall=end < step_end)
            self.m.release_console()
            for check in self.watchdogs:
                check()
            try:
                line = self.c.read_line(min(left, 0.5))
            except ConsoleClosed:
                self._machine_gone(step, waiting_for)
            if line is None:
                continue
            if accept(line):
                return line
            for pat in self.sc.fail_on:
                if pat.search(line.text):
                    self._fail_on(step, pat, line)

    def _expect(self, step: Expect) -> str:
        line = self._watch(
            step, lambda ln: bool(step.pattern.search(ln.text)), f"a line matching {step.pattern}"
        )
        if step.record:
            m = step.pattern.search(line.text)
            for group, typ in step.record:
                raw = m.group(group)
                try:
                    self.out.recorded[group] = RECORD_TYPES[typ](raw)
                except (TypeError, ValueError):
                    self._fail(
                        step,
                        f"recorded value {group}={raw!r} is not of type {typ}",
                        "record",
                        str(step.pattern),
                    )
        return f"matched at {line.t * 1000:.1f} ms: {line.text}"

    def _lines(self, step: Lines) -> str:
        left: list[Pattern] = list(step.patterns)

        def accept(ln: Line) -> bool:
            candidates = left[:1] if step.ordered else left
            for pat in candidates:
                if pat.search(ln.text):
                    left.remove(pat)
                    return not left
            return False

        what = "these lines in order: " if step.ordered else "all of these lines: "
        self._watch(step, accept, what + ", ".join(map(str, left)))
        return f"all {len(step.patterns)} lines seen"

    def _idle(self, step: Idle) -> str:
        self.m.wait_started(5)
        if self._probe is None:
            self._probe = IdleProbe(self.m.qmp, self.m.pid, self.accel)
        first = self._probe.sample()
        self._watch(step, lambda ln: False, "the idle window to end", seconds=step.seconds)
        window = self._probe.window(first, self._probe.sample())
        self.out.idle_windows.append(window)
        return (
            f"{window.idle * 100:.2f} % idle over {window.seconds:.3f} s "
            f"({window.method}), {window.wakeups_per_s:.1f} wake-ups/s"
        )

    def _exit(self, step: Exit) -> str:
        try:
            self._watch(step, lambda ln: False, f"QEMU to exit with status {step.status}")
        except _Exited as e:
            if e.status == step.status:
                return f"QEMU exited with status {e.status}: {e.sentence}"
            self._fail(
                step,
                f"QEMU exited with status {e.status}, expected {step.status}: {e.sentence}",
                "unexpected-exit",
                f"exit {step.status}",
            )
        raise AssertionError("unreachable")

    def _check_pci(self, step: Check) -> str:
        # The listing ends with '@stage pci'; an earlier step may already have read it.
        if not any(ln.text.startswith("@stage pci") for ln in self.c.lines):
            self._watch(
                step,
                lambda ln: ln.text.startswith("@stage pci"),
                "'@stage pci' (the end of the kernel's PCI listing)",
            )
        self.m.wait_started(5)
        kernel = pcicheck.parse_kernel(self.c.lines)
        qemu = pcicheck.parse_qmp(self.m.qmp.cmd("query-pci"))
        problems = pcicheck.compare(kernel, qemu)
        if problems:
            self._fail(
                step,
                "the kernel's PCI listing differs from QMP query-pci: " + "; ".join(problems),
                "pci-mismatch",
                "check: pci",
            )
        return f"{len(kernel)} functions agree with QMP query-pci"

    # -- failures ---------------------------------------------------------------
    def _evidence(self) -> list[str]:
        return [f"{ln.t * 1000:11.3f} {ln.text}" for ln in self.c.tail(EVIDENCE_LINES)]

    def _fail(
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
            self._fail(
                step,
                f"the scenario's {self.sc.timeout:g} s timeout expired while "
                f"waiting for {waiting_for}",
                "timeout",
                waiting_for,
                TIMEOUT,
            )
        self._fail(
            step,
            f"no {waiting_for.removeprefix('a ')} within {step.timeout:g} s"
            if waiting_for.startswith("a line")
            else f"timed out after {step.timeout:g} s waiting for {waiting_for}",
            "expectation",
            waiting_for,
        )

    def _fail_on(self, step: Step, pat: Pattern, line: Line) -> None:
        # Let the rest of a multi-line report arrive, then explain how QEMU ended.
        self.c.drain(0.3)
        status = self.m.wait_exit(1.0)
        extra = ""
        if status is not None:
            cat, sentence = explain_exit(status, self._events(), self.m.log_path)
            extra = f"; {sentence}"
        m = _EXC_LINE.match(line.text)
        category = "guest-exception" if m else "fail_on"
        what = (
            f"guest CPU exception vector {int(m[1], 16)} ({_VECTORS.get(int(m[1], 16), '?')})"
            if m
            else "a fail_on pattern matched"
        )
        self._fail(
            step, f"{what}: {line.text!r} at {line.t * 1000:.1f} ms{extra}", category, str(pat)
        )

    def _events(self) -> list[dict]:
        return [e for _, e in self.m.qmp.events()] if self.m.qmp else []

    def _machine_gone(self, step: Step, waiting_for: str) -> None:
        status = self.m.wait_exit(2.0)
        if status is None:
            raise InfraError("the serial console closed but QEMU is still running")
        if not self.c.lines and self.m.stderr_tail():
            # Nothing from the guest, a complaint from QEMU: it never got going
            # (bad option, KVM unusable, missing file).  Not the system under test.
            raise InfraError(
                f"QEMU exited during start-up (status {status}): {self.m.stderr_tail()}"
            )
        category, sentence = explain_exit(status, self._events(), self.m.log_path)
        self.out.qemu_exit = status
        self.out.exit_explained = sentence
        if isinstance(step, Exit):
            raise _Exited(status, sentence)
        self._fail(
            step, f"QEMU exited while waiting for {waiting_for}: {sentence}", category, waiting_for
        )


class _Exited(Exception):
    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status, self.sentence = status, sentence
