"""Outcomes of a run and what they mean for the exit status (docs/exit-codes.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EXIT_FAIL, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_PASS, EXIT_TIMEOUT

PASS, FAIL, ERROR, TIMEOUT, INTERRUPTED = "pass", "fail", "error", "timeout", "interrupted"
EXIT_CODES = {
    PASS: EXIT_PASS,
    FAIL: EXIT_FAIL,
    ERROR: EXIT_INFRA,
    TIMEOUT: EXIT_TIMEOUT,
    INTERRUPTED: EXIT_INTERRUPTED,
}
# When several runs end differently, the process exits with the worst one.
SEVERITY = [PASS, FAIL, TIMEOUT, ERROR, INTERRUPTED]


@dataclass
class Verdict:
    outcome: str
    reason: str  # one sentence: what went wrong (or "all N steps passed")
    category: str = ""  # expectation | fail_on | guest-exception | unexpected-exit | ...
    step: int | None = None  # 0-based index of the step that decided it
    step_label: str = ""
    step_line: int | None = None  # line in the scenario file
    pattern: str = ""
    evidence: list[str] = field(default_factory=list)  # last console lines, "t_ms text"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def to_json(self) -> dict:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "category": self.category,
            "step": self.step,
            "step_label": self.step_label,
            "step_line": self.step_line,
            "pattern": self.pattern,
            "evidence": self.evidence,
        }


class StepFailed(Exception):
    """Raised inside the step engine; carries the verdict it decided."""

    def __init__(self, verdict: Verdict):
        super().__init__(verdict.reason)
        self.verdict = verdict


def worst(outcomes: list[str]) -> str:
    return max(outcomes, key=SEVERITY.index) if outcomes else PASS


def is_flaky(final: list[tuple[str, bool]]) -> bool:
    """The flaky rule, for the final attempts (outcome, passed-only-on-a-retry) of one
    scenario/profile: a pass only on a retry, or repeats that disagree (some pass, some
    not).  The batch summary and the nightly comparison both use this one."""
    outcomes = {o for o, _ in final if o != INTERRUPTED}
    return any(f for _, f in final) or (PASS in outcomes and len(outcomes) > 1)
