"""The key and qmp step kinds and the usb device kind's keys, without QEMU.

The run tests play both the guest (the pty) and QEMU's QMP monitor: a key press sent
through the monitor is echoed into the pty the way the pixel keyboard driver echoes it
(no newline until Enter).  tests/integration/test_usb_driver.py does it for real.
"""

from __future__ import annotations

import os

import pytest

from hil.cli import main
from hil.console import Console
from hil.devices.usb import Usb
from hil.steps import StepRunner
from hil.steps.key import KEYMAP, QCODES
from hil.verdict import StepFailed

from .test_steps import PtyGuest, scenario


@pytest.fixture
def pty(tmp_path):
    g = PtyGuest(tmp_path)
    yield g
    g.close()


class EchoMonitor:
    """QMP's input-send-event, answered by echoing typed characters into the pty."""

    connected = True

    def __init__(self, guest: PtyGuest, echo: bool = True):
        self.guest, self.echo, self.sent = guest, echo, []
        self.shift = False

    def cmd(self, name, timeout=10.0, **args):
        self.sent.append((name, args))
        if name != "input-send-event":
            return {"echoed": name}
        for ev in args["events"]:
            q, down = ev["data"]["key"]["data"], ev["data"]["down"]
            if q == "shift":
                self.shift = down
            elif down and self.echo:
                char = {v: c for c, v in KEYMAP.items()}.get((q, self.shift), "")
                os.write(self.guest.slave, char.encode())
        return {}

    def events(self):
        return []


def run_with(tmp_path, guest, steps, monitor):
    sc = scenario(tmp_path, steps)
    console = Console(guest.console_fd, guest.launched, tmp_path / "serial.log")
    try:
        return StepRunner(sc, guest, console, "tcg", monitor=monitor).run(), console
    finally:
        console.close()


def validate(tmp_path, capsys, body: str) -> tuple[int, str]:
    p = tmp_path / "v.yaml"
    p.write_text("profile: q35-tcg-bios\n" + body)
    code = main(["validate", str(p)])
    return code, capsys.readouterr().err


def test_text_becomes_chords_with_shift_for_capitals_and_symbols(tmp_path):
    sc = scenario(tmp_path, "- key: 'aB!'\n")
    (step,) = sc.steps
    assert step.chords == (("a",), ("shift", "b"), ("shift", "1"))
    assert step.echoes == ("a", "B", "!")


def test_chords_of_key_names_and_their_echo(tmp_path):
    sc = scenario(tmp_path, "- key: [shift+a+b, ret, spc, esc]\n  hold: 0.5\n")
    (step,) = sc.steps
    assert step.chords == (("shift", "a", "b"), ("ret",), ("spc",), ("esc",))
    assert step.echoes == ("", "", " ", "")  # two keys at once: no single echo
    assert step.timeout >= 4 * (0.5 + 0.05)  # the step's time covers its keys


def test_an_unknown_key_name_is_invalid_input_at_its_line(tmp_path, capsys):
    code, err = validate(tmp_path, capsys, "steps:\n  - key:\n      - a\n      - shfit+b\n")
    assert code == 2, err
    assert "v.yaml:5: steps[0].key[1]: unknown key name 'shfit'" in err
    assert "did you mean 'shift'?" in err and "Traceback" not in err


def test_text_a_us_keyboard_cannot_type_is_invalid_input(tmp_path, capsys):
    code, err = validate(tmp_path, capsys, "steps:\n  - key: 'caf\u00e9'\n")
    assert code == 2 and "v.yaml:3: steps[0].key: cannot type '\u00e9'" in err


def test_record_needs_echo(tmp_path, capsys):
    code, err = validate(tmp_path, capsys, "steps:\n  - key: 'a'\n    record: k\n")
    assert code == 2 and "add 'echo: true'" in err


def test_qcode_list_covers_the_keymap():
    assert {q for q, _ in KEYMAP.values()} <= QCODES


def test_echo_latency_is_recorded_and_partial_lines_survive(tmp_path, pty):
    mon = EchoMonitor(pty)
    steps = (
        "- key: 'abc'\n  echo: true\n  record: k\n  gap: 0\n  hold: 0.01\n- expect: 'line: abc'\n"
    )
    pty.say("line: abc", delay=0.6)  # after the echoes, as the driver prints it
    out, console = run_with(tmp_path, pty, steps, mon)
    assert out.recorded["k.n"] == 3
    assert 0 <= out.recorded["k.p50_ms"] <= out.recorded["k.p99_ms"] < 5000
    # the echoed characters start the next line, as on the real console
    assert [ln.text for ln in console.lines] == ["abcline: abc"]
    downs = [e for _, a in mon.sent for e in a["events"] if e["data"]["down"]]
    assert [e["data"]["key"]["data"] for e in downs] == ["a", "b", "c"]


def test_a_key_not_echoed_fails_the_step(tmp_path, pty):
    mon = EchoMonitor(pty, echo=False)
    with pytest.raises(StepFailed) as e:
        run_with(tmp_path, pty, "- key: 'x'\n  echo: true\n  timeout: 1\n", mon)
    assert "was not echoed" in e.value.verdict.reason


def test_qmp_step_sends_the_command_with_its_arguments(tmp_path, pty):
    mon = EchoMonitor(pty)
    run_with(tmp_path, pty, "- qmp: device_del\n  args: {id: usb0-stick}\n", mon)
    assert mon.sent == [("device_del", {"id": "usb0-stick"})]


def test_qmp_step_refuses_commands_that_end_the_run(tmp_path, capsys):
    code, err = validate(tmp_path, capsys, "steps:\n  - qmp: quit\n")
    assert code == 2 and "v.yaml:3: steps[0].qmp: quit would end" in err


def test_usb_stick_takes_the_disk_fills(tmp_path):
    sc = scenario(
        tmp_path, "- expect: x\n", "devices:\n  - usb: {storage: 1M, fill: {random: 3}}\n"
    )
    assert sc.devices == (Usb(keyboard=True, storage=1 << 20, fill="random:3"),)


@pytest.mark.parametrize(
    ("dev", "message"),
    [
        ("{storage: 1000}", "v.yaml:3: devices[0].usb.storage: must be a multiple of 512"),
        ("{fill: lba}", "v.yaml:3: devices[0].usb.fill: a fill is the stick's content"),
        ("{storage: 1M, fill: 300}", "v.yaml:3: devices[0].usb.fill: must be"),
    ],
)
def test_usb_bad_storage_is_invalid_input(tmp_path, capsys, dev, message):
    code, err = validate(tmp_path, capsys, f"devices:\n  - usb: {dev}\nsteps:\n  - expect: x\n")
    assert code == 2 and message in err, err
    assert "Traceback" not in err
