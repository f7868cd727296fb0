"""Regression (issue 9): a line the guest prints while an idle window, a send or a check
runs stays available to the next step (on an H200, 'compute fold ...' arrived during
'idle' and the next 'expect' never saw it)."""

from __future__ import annotations

import os
import threading

import pytest

from hil.checks import CHECKS, CheckKind
from hil.console import Console

from .test_steps import PtyGuest, scenario


class FakeMonitor:
    connected = True

    def cmd(self, name, timeout=10.0, **args):
        assert name == "query-cpus-fast"
        return [{"thread-id": threading.get_native_id()}]

    def events(self):
        return []


class Guest(PtyGuest):
    def wait_started(self, timeout=30.0):
        pass


@pytest.fixture
def guest(tmp_path):
    g = Guest(tmp_path)
    g.pid = os.getpid()
    yield g
    g.close()


def run(tmp_path, guest, steps):
    from hil.steps import StepRunner

    sc = scenario(tmp_path, steps)
    console = Console(guest.console_fd, guest.launched, tmp_path / "serial.log")
    try:
        return StepRunner(sc, guest, console, "tcg", monitor=FakeMonitor()).run()
    finally:
        console.close()


def test_line_printed_during_idle_reaches_the_next_expect(tmp_path, guest):
    guest.say("compute fold 8716b7ae", delay=0.3)  # arrives inside the 1 s window
    out = run(tmp_path, guest, "- idle: 1.0\n- expect: 'compute fold 8716b7ae'\n  timeout: 2\n")
    idle, expect = out.results
    assert idle.status == expect.status == "passed"
    assert "8716b7ae" in expect.detail and idle.started + idle.duration >= 1.0


def test_line_printed_before_a_send_reaches_the_next_expect(tmp_path, guest):
    guest.say("before")
    out = run(tmp_path, guest, "- send: hello\n- expect: before\n  timeout: 2\n")
    assert [r.status for r in out.results] == ["passed", "passed"]
    assert guest.read_input() == b"hello\r"


class LookCheck(CheckKind):
    """A live check that reads the console up to a marker without consuming it."""

    name = "look"
    live = True

    def run_live(self, step, engine):
        engine.watch(step, lambda ln: ln.text == "marker", "marker", consume=False)
        return "seen"


def test_lines_a_check_read_stay_for_the_next_step(tmp_path, guest):
    guest.say("first", "marker")
    with CHECKS.added(LookCheck):
        out = run(tmp_path, guest, "- check: look\n- expect: first\n  timeout: 2\n")
    assert [r.status for r in out.results] == ["passed", "passed"]


def test_a_matched_line_is_consumed(tmp_path, guest):
    """The other side of the rule: what an expect matched is not matched again."""
    from hil.verdict import StepFailed

    guest.say("once")
    with pytest.raises(StepFailed):
        run(tmp_path, guest, "- expect: once\n- expect: once\n  timeout: 0.5\n")
