"""A permanent guard for `hil validate` (issue 9): valid scenario and profile documents,
mutated by hypothesis -- wrong types, huge and non-finite numbers, odd strings (commas,
'=', newlines, control characters, long ones), deep nesting, raw text damage -- must each
give exit 0 or 2, never a traceback, a message that names the file, in bounded time,
memory and output."""

from __future__ import annotations

import copy
import io
import os
import resource
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.cli import main

REPO = Path(__file__).resolve().parent.parent

SCENARIO = {
    "name": "fuzz",
    "description": "a valid scenario that hypothesis mutates",
    "profile": "./profile.yaml",
    "timeout": 60,
    "ready": "@stage ready",
    "image": {"boot_fault": False},
    "devices": [
        {"nvme": {"size": "16M", "fill": "lba", "serial": "PXNVME0"}},
        {"nic": {"model": "e1000"}},
        {"usb": {"keyboard": True, "storage": "8M", "fill": {"random": 3}}},
        {"display": {"model": "std"}},
    ],
    "fail_on": ["PANIC", {"regex": "^!EXC vec=(?P<vec>[0-9a-f]+)"}],
    "default_fail_on": True,
    "steps": [
        {"expect": {"regex": r"^stats busy=(?P<busy>[0-9a-f]+)"}, "record": {"busy": "hex"}},
        {"lines": ["a", {"regex": "b+"}], "ordered": False, "timeout": 5},
        {"send": "stats", "name": "ask"},
        {"key": "Ab!", "echo": True, "record": "k", "gap": 0.01},
        {"key": ["shift+a", "ret"], "hold": 0.1},
        {"qmp": "device_del", "args": {"id": "usb0-stick"}},
        {"idle": 1.5},
        {"check": "pci"},
        {"exit": "shutdown"},
    ],
    "metrics": {"boot_ms": {"max": 150}, "busy": {"min": 0, "max": 1e9}},
}
PROFILE = {
    "description": "a valid profile that hypothesis mutates",
    "machine": "q35",
    "accel": "tcg",
    "boot": "bios",
    "memory": 128,
    "cpus": 1,
    "acpi": True,
    "devices": [{"nic": {"model": "virtio-net"}}],
    "qemu_args": ["-device", "pvpanic"],
}

ODD_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "X,bus=nosuchbus",
        "a=b",
        "line\nbreak",
        "cr\rlf",
        "nul\x00byte",
        "\x1b[31mred",
        "../../../../etc/passwd",
        "/dev/zero",
        "/etc/shadow",
        "%s%n",
        "${HOME}",
        "'quoted'",
        "é☕\u202e",
        "-1",
        "0x",
        "20000G",
        "1" * 400 + "G",
        "(a+)+b",
        "(?P<x>a)(?P=x)",
        "[",
        "nightly",
        "history.sqlite",
    ]
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63, 2**64, 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    ODD_STRINGS,
    st.text(max_size=50),
    st.text(alphabet=",=\n :'\"\\-{}[]#&*!|>%@`", max_size=30),
    st.integers(min_value=1000, max_value=200_000).map(lambda n: "x" * n),
)


def _deep(value, depth: int, as_list: bool):
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=5),
    st.dictionaries(st.text(max_size=10), SCALARS, max_size=4),
    st.builds(_deep, SCALARS, st.integers(1, 200), st.booleans()),
)


def _paths(doc, prefix=()):
    """Every path into doc (keys and indices), the root excluded."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for k, v in items:
        yield (*prefix, k)
        if isinstance(v, dict | list):
            yield from _paths(v, (*prefix, k))


def _mutate(doc, path, action: str, value):
    doc = copy.deepcopy(doc)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):  # add a sibling key
        parent[str(value)[:40] if not isinstance(value, dict | list) else "extra"] = value
    else:
        parent.append(value)
    return doc


def _dump(doc) -> str:
    # Our own limits are under test, not PyYAML's emitter: floats it cannot write (nan
    # is fine, but huge ints are written as text) go through as they are.
    try:
        return yaml.safe_dump(doc, allow_unicode=True, width=10_000)
    except (yaml.YAMLError, RecursionError, ValueError):
        return yaml.safe_dump({"dump": "failed"})


def mutated(base):
    paths = list(_paths(base))
    return st.builds(
        _mutate,
        st.just(base),
        st.sampled_from(paths),
        st.sampled_from(["replace", "replace", "delete", "add"]),
        VALUES,
    )


TEXT_DAMAGE = st.one_of(
    st.just(""),
    st.sampled_from(["\t", ": :", "? [a, b]\n: 1\n", "&a x\n", "*nope", "!!python/name:os\n"]),
    st.sampled_from(["[" * 5000, "{a: " * 2000, "- " * 3000 + "x"]),
    st.text(max_size=40),
)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10  # KiB on Linux


def _validate(path: Path) -> tuple[int, str, float]:
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["validate", str(path)])
    return code, out.getvalue() + err.getvalue(), time.monotonic() - t0


# The peak memory of this process may grow by this much over a fuzz test: an alias bomb
# or a quadratic blow-up needs gigabytes (tracemalloc would be exact, and five times
# slower).  The baseline is taken when each test starts: in the whole suite, tests that
# ran before (wgpu, numpy) have raised the process's peak since this module was imported.
RSS_GROWTH = 300 << 20
_RSS_AT_START = _peak_rss()


@pytest.fixture(autouse=True)
def _rss_baseline():
    global _RSS_AT_START
    _RSS_AT_START = _peak_rss()


def _check(tmp: Path, scenario: str, profile: str) -> None:
    (tmp / "s.yaml").write_text(scenario)
    (tmp / "profile.yaml").write_text(profile)
    code, out, elapsed = _validate(tmp / "s.yaml")
    assert code in (0, 2), out[:2000]
    assert "Traceback" not in out
    if code == 2:
        assert str(tmp / "s.yaml") in out or str(tmp / "profile.yaml") in out, out[:2000]
    # What a user reads stays a few paragraphs, whatever the input's size.
    assert len(out) < 20_000, f"{len(out)} characters of output"
    assert elapsed < 5.0, f"validate took {elapsed:.1f} s"
    grown = _peak_rss() - _RSS_AT_START
    assert grown < RSS_GROWTH, f"peak memory grew by {grown >> 20} MiB"


FUZZ = settings(
    max_examples=int(os.environ.get("HIL_FUZZ_EXAMPLES", "300")),
    deadline=None,  # _check bounds the time itself (a clearer message than hypothesis')
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=not os.environ.get("HIL_FUZZ_RANDOM"),  # CI: the same examples every run
)


@FUZZ
@given(scenario=mutated(SCENARIO), damage=TEXT_DAMAGE)
def test_mutated_scenarios(tmp_path, scenario, damage):
    _check(tmp_path, _dump(scenario) + damage, _dump(PROFILE))


@FUZZ
@given(profile=mutated(PROFILE), damage=TEXT_DAMAGE)
def test_mutated_profiles(tmp_path, profile, damage):
    _check(tmp_path, _dump(SCENARIO), _dump(profile) + damage)


def test_the_unmutated_documents_are_valid(tmp_path):
    (tmp_path / "s.yaml").write_text(_dump(SCENARIO))
    (tmp_path / "profile.yaml").write_text(_dump(PROFILE))
    code, out, _ = _validate(tmp_path / "s.yaml")
    assert code == 0, out


@pytest.mark.parametrize(
    "body",
    [
        "timeout: " + "9" * 401,
        "timeout: .nan",
        "x: " + "[" * 50_000,
        "serial: 'X,bus=nosuchbus'\nname: " + "y" * 300_000,
        "steps: [{expect: {regex: '(a+)+b'}}, {expect: {regex: 'x(?=y)'}}]",
    ],
)
def test_through_a_subprocess(tmp_path, body):
    (tmp_path / "profile.yaml").write_text(_dump(PROFILE))
    doc = _dump({k: v for k, v in SCENARIO.items() if k != "steps"}) + body + "\n"
    if "steps" not in body:
        doc += "steps: [{expect: x}]\n"
    (tmp_path / "s.yaml").write_text(doc)
    p = subprocess.run(
        [sys.executable, "-m", "hil.cli", "validate", str(tmp_path / "s.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 2 and "Traceback" not in out, out[:3000]
    assert str(tmp_path / "s.yaml") in out and len(out) < 20_000
