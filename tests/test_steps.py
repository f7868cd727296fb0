"""Console matching and step semantics, over a real pty (the guest side is the test).

These are unit tests of the step engine: the test plays the guest by writing lines into
the pty's slave end.  tests/integration/ runs the same engine against QEMU.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
import tty
from pathlib import Path

import pytest

from hil.console import Console
from hil.metrics import boot_metrics
from hil.scenario import Pattern, load_scenario
from hil.steps import StepRunner, explain_exit
from hil.verdict import StepFailed


class PtyGuest:
    """The machine side of a real pty: what the engine reads is what we write here."""

    def __init__(self, tmp_path: Path):
        master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(master, False)
        self.console_fd = master
        self.launched = time.monotonic()
        self.log_path = tmp_path / "qemu.log"
        self.qmp = None
        self.pid = os.getpid()
        self.exit_status: int | None = None
        self.received = b""

    def say(self, *lines: str, delay: float = 0.0) -> None:
        def write():
            for ln in lines:
                if delay:
                    time.sleep(delay)
                os.write(self.slave, (ln + "\n").encode())

        if delay:
            threading.Thread(target=write, daemon=True).start()
        else:
            write()

    def power_off(self, status: int) -> None:
        self.exit_status = status
        os.close(self.slave)
        self.slave = None

    def read_input(self) -> bytes:
        try:
            return os.read(self.slave, 100)
        except BlockingIOError:
            return b""

    # the parts of QemuMachine the engine uses
    def wait_exit(self, timeout: float):
        return self.exit_status

    def stderr_tail(self) -> str:
        return ""

    def release_console(self) -> None:
        pass

    def close(self) -> None:
        for fd in (self.console_fd, self.slave):
            if fd is not None:
                os.close(fd)


@pytest.fixture
def guest(tmp_path):
    g = PtyGuest(tmp_path)
    yield g
    g.close()


def scenario(tmp_path: Path, steps: str, extra: str = ""):
    p = tmp_path / "s.yaml"
    head = "profile: q35-tcg-bios\n" + ("" if "timeout:" in extra else "timeout: 20\n")
    p.write_text(
        head + "steps:\n" + textwrap.indent(textwrap.dedent(steps), "  ") + textwrap.dedent(extra)
    )
    return load_scenario(p)


def run(tmp_path, guest, steps, extra=""):
    sc = scenario(tmp_path, steps, extra)
    console = Console(guest.console_fd, guest.launched, tmp_path / "serial.log")
    runner = StepRunner(sc, guest, console, "tcg")
    try:
        return runner.run(), console
    finally:
        console.close()


def failure(tmp_path, guest, steps, extra=""):
    with pytest.raises(StepFailed) as e:
        run(tmp_path, guest, steps, extra)
    return e.value.verdict


def test_expect_substring_and_regex_record(tmp_path, guest):
    guest.say("noise", "pxOS microkernel 0.1.0 bios", "stats busy=1f halt=ff")
    out, console = run(
        tmp_path,
        guest,
        """\
        - expect: 'microkernel 0.1.0'
        - expect: {regex: '^stats busy=(?P<b>[0-9a-f]+) halt=(?P<h>[0-9a-f]+)$'}
          record: {b: hex, h: hex}
        """,
    )
    assert [r.status for r in out.results] == ["passed", "passed"]
    assert out.recorded == {"b": 0x1F, "h": 0xFF}
    log = (tmp_path / "serial.log").read_text().splitlines()
    assert log[0].split(maxsplit=1)[1] == "noise" and len(log) == 3


def test_ordered_lines_must_come_in_order(tmp_path, guest):
    guest.say("b", "a")
    v = failure(
        tmp_path,
        guest,
        """\
        - lines: [a, b]
          timeout: 0.5
        """,
    )
    assert v.outcome == "fail" and v.category == "expectation"
    assert "in order" in v.reason and v.step == 0
    assert [e.split()[-1] for e in v.evidence] == ["b", "a"]


def test_unordered_lines_in_any_order(tmp_path, guest):
    guest.say("b", "x", "a")
    out, _ = run(
        tmp_path,
        guest,
        """\
        - lines: [a, b]
          ordered: false
          timeout: 2
        """,
    )
    assert out.results[0].status == "passed"


def test_one_line_satisfies_one_pattern(tmp_path, guest):
    guest.say("ab")
    v = failure(
        tmp_path,
        guest,
        """\
        - lines: [a, b]
          ordered: false
          timeout: 0.5
        """,
    )
    assert v.outcome == "fail"


def test_fail_on_stops_the_run_at_once(tmp_path, guest):
    guest.say("booting", "!EXC vec=6 err=0 rip=100123 cr2=0", "@stage ready")
    t0 = time.monotonic()
    v = failure(
        tmp_path,
        guest,
        """\
        - expect: '@stage ready'
          timeout: 10
        """,
    )
    assert time.monotonic() - t0 < 3
    assert v.category == "guest-exception" and "vector 6 (#UD invalid opcode)" in v.reason
    assert v.pattern == "'!EXC'"


def test_expected_text_wins_over_fail_on(tmp_path, guest):
    guest.say("!EXC vec=e err=2 rip=1 cr2=0")
    out, _ = run(tmp_path, guest, "- expect: {regex: '^!EXC vec=e '}\n")
    assert out.results[0].status == "passed"


def test_custom_fail_on_and_disabling_defaults(tmp_path, guest):
    guest.say("!EXC vec=6 err=0 rip=0 cr2=0", "oops: PANIC here", "done")
    v = failure(tmp_path, guest, "- expect: done\n", "default_fail_on: false\nfail_on: ['PANIC']\n")
    assert v.category == "fail_on" and "oops: PANIC here" in v.reason


def test_step_timeout_is_a_failure_with_transcript(tmp_path, guest):
    guest.say(*[f"line {i}" for i in range(30)])
    t0 = time.monotonic()
    v = failure(
        tmp_path,
        guest,
        """\
        - expect: never
          timeout: 0.3
        """,
    )
    assert 0.25 < time.monotonic() - t0 < 2
    assert v.outcome == "fail" and "no line matching 'never' within 0.3 s" == v.reason
    assert len(v.evidence) == 20 and v.evidence[-1].endswith("line 29")
    assert v.step_line == 4


def test_overall_timeout_is_a_timeout(tmp_path, guest):
    v = failure(
        tmp_path,
        guest,
        """\
        - expect: never
          timeout: 30
        """,
        "timeout: 0.4\n",
    )
    assert v.outcome == "timeout" and "0.4 s timeout expired" in v.reason


def test_send_reaches_the_guest(tmp_path, guest):
    guest.say("prompt", delay=0.2)
    run(tmp_path, guest, "- send: stats\n- expect: prompt\n")
    assert guest.read_input() == b"stats\r"


def test_exit_step(tmp_path, guest):
    guest.say("bye")
    threading.Timer(0.2, guest.power_off, args=(1,)).start()
    out, _ = run(tmp_path, guest, "- expect: bye\n- exit: shutdown\n")
    assert "status 1" in out.results[1].detail


def test_unexpected_exit_is_explained(tmp_path, guest):
    guest.say("!EXC vec=d err=0 rip=1 cr2=0")
    guest.power_off((0x20 + 13) * 2 + 1)
    v = failure(tmp_path, guest, "- expect: never\n", "default_fail_on: false\n")
    assert v.category == "guest-exception"
    assert "QEMU exited while waiting" in v.reason and "vector 13" in v.reason


def test_wrong_exit_status(tmp_path, guest):
    guest.power_off(63)
    v = failure(tmp_path, guest, "- exit: shutdown\n")
    assert "expected 1" in v.reason and "panicked" in v.reason


@pytest.mark.parametrize(
    "status, events, log, category",
    [
        (1, [], "", "shutdown"),
        (63, [], "", "panic"),
        (77, [], "", "guest-exception"),
        (0, [{"event": "SHUTDOWN", "data": {"reason": "guest-reset"}}], "", "triple-fault"),
        (0, [], "Triple fault\n", "triple-fault"),
        (-9, [], "", "unexpected-exit"),
        (0, [{"event": "SHUTDOWN", "data": {"reason": "host-signal"}}], "", "unexpected-exit"),
    ],
)
def test_explain_exit(tmp_path, status, events, log, category):
    (tmp_path / "q.log").write_text(log)
    assert explain_exit(status, events, tmp_path / "q.log")[0] == category


class _L:
    def __init__(self, t, text):
        self.t, self.text = t, text


def test_boot_metrics_backdates_reported_stages():
    lines = [
        _L(0.050, "pxOS microkernel 0.1.0 bios"),
        _L(0.051, "@stage boot tsc=0"),
        _L(0.052, "@stage lmode tsc=3e8"),
        _L(0.053, "@stage kernel tsc=7d0"),
        _L(0.060, "@stage ready tsc=2710"),
        _L(0.070, "@tsc khz=3e8"),
    ]  # 1 MHz TSC
    m = boot_metrics(lines, Pattern("@stage ready"))
    assert m["first_output_ms"] == 50 and m["boot_ms"] == 60
    assert m["guest_us.kernel"] == 2000 and m["guest_us.ready"] == 10000
    assert m["stage_ms.kernel"] == 53 and m["stage_ms.ready"] == 60
    assert m["stage_ms.boot"] == 51  # 53 ms - 2000 us
    assert m["stage_ms.lmode"] == 52
