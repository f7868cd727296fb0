"""Scenario and profile validation: every mistake is caught with file, line and a fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hil import devices as dev
from hil.cli import main
from hil.scenario import Exit, Expect, Idle, Lines, load_scenario
from hil.yamlsrc import ValidationError

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
name: t
profile: q35-tcg-bios
steps:
  - expect: '@stage ready'
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    p = write(tmp_path, text)
    with pytest.raises(ValidationError) as e:
        load_scenario(p)
    return e.value.problems


def test_minimal_scenario_defaults(tmp_path):
    sc = load_scenario(write(tmp_path, GOOD))
    assert sc.name == "t" and sc.profile.name == "q35-tcg-bios"
    assert sc.timeout == 60 and [str(p) for p in sc.fail_on] == ["'!EXC'", "'!PANIC'"]
    (step,) = sc.steps
    assert isinstance(step, Expect) and step.line == 4 and step.timeout == 10


def test_shipped_scenarios_validate():
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        load_scenario(path)


def test_shipped_scenarios_plan_and_assemble():
    """Plans too, which assembles each GPU program: a merge once left net-dma.yaml's
    program without the udp_rx hook that stack.pxs had come to require, found only by
    `hil validate` (regression test)."""
    from hil.plan import make_plan

    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        make_plan(load_scenario(path))


@pytest.mark.parametrize(
    "text, line, needles",
    [
        # unknown top-level key, with a suggestion
        (GOOD + "timout: 5\n", 5, ["unknown key 'timout'", "did you mean 'timeout'"]),
        # wrong type
        (GOOD + "timeout: soon\n", 5, ["timeout", "expected a number", "timeout: 60"]),
        # booleans are not numbers
        (GOOD + "timeout: yes\n", 5, ["expected a number"]),
        # negative timeout
        (GOOD + "timeout: -1\n", 5, ["greater than 0"]),
        # unknown step kind
        ("profile: q35-tcg-bios\nsteps:\n  - expct: x\n", 3, ["did you mean 'expect'"]),
        # two kinds in one step
        ("profile: q35-tcg-bios\nsteps:\n  - expect: x\n    send: y\n", 3, ["several kinds"]),
        # bad regex
        (
            "profile: q35-tcg-bios\nsteps:\n  - expect: {regex: 'a('}\n",
            3,
            ["invalid regular expression", "missing )"],
        ),
        # unknown key inside a step
        (
            "profile: q35-tcg-bios\nsteps:\n  - expect: x\n    timeuot: 3\n",
            4,
            ["steps[0].timeuot", "did you mean 'timeout'"],
        ),
        # missing profile
        (
            "profile: q35-nope\nsteps:\n  - expect: x\n",
            1,
            ["no profile 'q35-nope'", "qemu_configs/"],
        ),
        # no steps key
        ("profile: q35-tcg-bios\n", None, ["required key 'steps' is missing"]),
        # empty steps
        ("profile: q35-tcg-bios\nsteps: []\n", 2, ["no steps"]),
        # record on a substring pattern
        (
            "profile: q35-tcg-bios\nsteps:\n  - expect: 'x'\n    record: {v: int}\n",
            4,
            ["not a named group"],
        ),
        # record type unknown
        (
            "profile: q35-tcg-bios\nsteps:\n  - expect: {regex: '(?P<v>\\d+)'}\n"
            "    record: {v: integer}\n",
            4,
            ["'integer'", "did you mean 'int'"],
        ),
        # metric unknown
        (
            GOOD + "metrics:\n  boot_time: {max: 3}\n",
            6,
            ["unknown metric 'boot_time'", "did you mean 'boot_ms'"],
        ),
        # metric min above max
        (GOOD + "metrics:\n  boot_ms: {min: 5, max: 3}\n", 6, ["no value can pass"]),
        # metric without bounds
        (GOOD + "metrics:\n  boot_ms: {}\n", 6, ["give 'min', 'max' or both"]),
        # exit status out of range
        ("profile: q35-tcg-bios\nsteps:\n  - exit: 999\n", 3, ["not an exit status"]),
        # send with a newline
        ('profile: q35-tcg-bios\nsteps:\n  - send: "a\\nb"\n', 3, ["one line at a time"]),
        # check kind
        (
            "profile: q35-tcg-bios\nsteps:\n  - check: usb\n",
            3,
            ["'usb' is not one of passthrough, pci"],
        ),
        # device kind
        (
            GOOD + "devices:\n  - nvm: {size: 1M}\n",
            6,
            ["unknown device kind 'nvm'", "did you mean 'nvme'"],
        ),
        # device size
        (GOOD + "devices:\n  - nvme: {size: lots}\n", 6, ["not a size", "64M"]),
        # nvme file missing
        (GOOD + "devices:\n  - nvme: {file: nope.img}\n", 6, ["does not exist"]),
        # nic model
        (GOOD + "devices:\n  - nic: {model: rtl8139}\n", 6, ["'rtl8139' is not one of"]),
        # fail_on must be a list
        (GOOD + "fail_on: PANIC\n", 5, ["expected a list"]),
        # empty pattern
        ("profile: q35-tcg-bios\nsteps:\n  - expect: ''\n", 3, ["empty pattern"]),
        # bad name
        ("name: 'a b/c'\n" + GOOD.split("\n", 1)[1], 1, ["cannot name a results directory"]),
        # image option
        (GOOD + "image: {boot_falt: true}\n", 5, ["did you mean 'boot_fault'"]),
        # pattern of the wrong shape
        ("profile: q35-tcg-bios\nsteps:\n  - lines: [1, 2]\n", 3, ["a pattern is a string"]),
    ],
)
def test_bad_input_names_file_line_and_fix(tmp_path, text, line, needles):
    found = problems(tmp_path, text)
    joined = "\n".join(found)
    path = str(tmp_path / "s.yaml")
    assert joined.startswith(path), joined
    if line is not None:
        assert any(p.startswith(f"{path}:{line}:") for p in found), joined
    for needle in needles:
        assert needle in joined, f"{needle!r} not in:\n{joined}"


def test_all_problems_reported_at_once(tmp_path):
    found = problems(tmp_path, GOOD + "timout: 5\nmetrics:\n  boot_time: {max: 1}\n")
    assert len(found) == 2


def test_yaml_syntax_error_has_line(tmp_path):
    found = problems(tmp_path, "profile: q35-tcg-bios\nsteps:\n  - expect: x\n   bad: [\n")
    assert found[0].startswith(f"{tmp_path / 's.yaml'}:4:") or ":5:" in found[0]
    assert "YAML syntax error" in found[0]


def test_duplicate_key_is_an_error(tmp_path):
    found = problems(tmp_path, GOOD + "timeout: 5\ntimeout: 6\n")
    assert "duplicate key 'timeout'" in found[0]


def test_missing_file(tmp_path):
    with pytest.raises(ValidationError) as e:
        load_scenario(tmp_path / "nope.yaml")
    assert "no such scenario file" in str(e.value)


def test_profile_errors_are_reported_with_the_profile_file(tmp_path):
    write(tmp_path, "machine: q36\naccel: fast\nmemory: 3\n", "p.yaml")
    found = problems(tmp_path, GOOD.replace("q35-tcg-bios", "p.yaml"))
    joined = "\n".join(found)
    assert f"{tmp_path / 'p.yaml'}:1: machine: 'q36' is not one of q35, pc" in joined
    assert "did you mean 'q35'" in joined
    assert f"{tmp_path / 'p.yaml'}:2: accel" in joined
    assert "memory" in joined and "at least 16 MiB" in joined


def test_step_kinds_and_options(tmp_path):
    sc = load_scenario(
        write(
            tmp_path,
            """\
        profile: q35-tcg-bios
        steps:
          - lines: [a, {regex: 'b+'}]
            ordered: false
            timeout: 3
          - idle: 2
          - exit: shutdown
          - exit: 77
        devices:
          - nvme: {size: 1M, fill: 0xA5}
          - usb: {storage: 4M}
          - nic: {}
          - display:
        """,
        )
    )
    lines, idle, ex1, ex2 = sc.steps
    assert isinstance(lines, Lines) and not lines.ordered and lines.timeout == 3
    assert lines.patterns[1].regex and lines.patterns[1].search("xbbb")
    assert isinstance(idle, Idle) and idle.seconds == 2 and idle.timeout >= 7
    assert isinstance(ex1, Exit) and ex1.status == 1 and ex2.status == 77
    nvme, usb, nic, display = sc.devices
    assert nvme == dev.Nvme(size=1 << 20, fill="0xa5")
    assert usb == dev.Usb(keyboard=True, storage=4 << 20)
    assert nic == dev.Nic() and display == dev.Display()


def test_substring_patterns_are_literal():
    from hil.scenario import Pattern

    p = Pattern("a.b (c)")
    assert p.search("xx a.b (c) yy") and not p.search("axb (c)")


def test_cli_validate_exit_codes(tmp_path, capsys):
    good = write(tmp_path, GOOD, "good.yaml")
    bad = write(tmp_path, GOOD + "timout: 1\n", "bad.yaml")
    assert main(["validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5: timout: unknown key 'timout'" in err
    assert "nothing was run" in err and "Traceback" not in err


def test_cli_run_with_invalid_scenario_runs_nothing(tmp_path, capsys):
    bad = write(tmp_path, GOOD + "timout: 1\n", "bad.yaml")
    assert main(["run", str(bad), "--results", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_profile_override_unknown(tmp_path, capsys):
    good = write(tmp_path, GOOD)
    assert main(["validate", str(good), "--profile", "nope"]) == 2
    assert "--profile: no profile 'nope'" in capsys.readouterr().err


def test_gpu_section_needs_a_virtual_gpu_and_a_program(tmp_path):
    prog = tmp_path / "p.pxs"
    prog.write_text("main:\n    halt\n")
    found = problems(tmp_path, GOOD + f"gpu: {{program: {prog}}}\n")
    assert "has no virtual GPU" in found[0] and "q35-tcg-vgpu" in found[0]
    found = problems(
        tmp_path,
        GOOD.replace("q35-tcg-bios", "q35-tcg-vgpu") + "gpu: {program: nope.pxs, backend: cuda}\n",
    )
    joined = "\n".join(found)
    assert "'cuda' is not one of wgpu, numpy" in joined


def test_gpu_program_that_does_not_assemble_is_invalid_input(tmp_path, capsys):
    prog = tmp_path / "bad.pxs"
    prog.write_text("main:\n    frobnicate r1\n")
    sc = write(
        tmp_path, GOOD.replace("q35-tcg-bios", "q35-tcg-vgpu") + f"gpu: {{program: {prog}}}\n"
    )
    assert main(["validate", str(sc)]) == 2
    err = capsys.readouterr().err
    assert f"{prog}:2" in err and "frobnicate" in err and "Traceback" not in err
