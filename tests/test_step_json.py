"""The json step kind over a real pty: a tool's report between marker lines -> metrics."""

from __future__ import annotations

import json

import pytest

from hil.console import Console
from hil.steps import StepRunner
from hil.verdict import StepFailed

from .test_steps import PtyGuest, scenario

DOC = {"jobs": [{"read": {"iops": 8613.4, "clat_ns": {"percentile": {"50.000000": 3984}}}}]}
STEP = """\
- json: {begin: '@fio begin', end: '@fio end'}
  record:
    fio.iops: [jobs, 0, read, iops]
    fio.p50_ns: [jobs, 0, read, clat_ns, percentile, '50.000000']
"""


@pytest.fixture
def guest(tmp_path):
    g = PtyGuest(tmp_path)
    yield g
    g.close()


def run(tmp_path, guest, steps):
    sc = scenario(tmp_path, steps)
    console = Console(guest.console_fd, guest.launched, tmp_path / "serial.log")
    try:
        return StepRunner(sc, guest, console, "tcg").run()
    finally:
        console.close()


def test_numbers_from_the_document_become_metrics(tmp_path, guest):
    guest.say("noise", "@fio begin", *json.dumps(DOC, indent=2).splitlines(), "@fio end")
    out = run(tmp_path, guest, STEP)
    assert out.recorded == {"fio.iops": 8613.4, "fio.p50_ns": 3984}


def test_a_path_the_document_lacks_fails_the_step_and_says_which(tmp_path, guest):
    doc = {"jobs": [{"read": {}}]}
    guest.say("@fio begin", json.dumps(doc), "@fio end")
    with pytest.raises(StepFailed) as e:
        run(tmp_path, guest, STEP)
    assert "fio.iops: the document has no ['jobs', 0, 'read', 'iops'] (no 'iops')" in str(e.value)


def test_text_that_is_not_json_fails_the_step(tmp_path, guest):
    guest.say("@fio begin", "{ half", "[  12.3] nvme nvme0: a kernel message", "@fio end")
    with pytest.raises(StepFailed) as e:
        run(tmp_path, guest, STEP)
    assert "is not JSON" in str(e.value)


def test_recorded_names_may_carry_metric_limits(tmp_path):
    sc = scenario(tmp_path, STEP, extra="metrics:\n  fio.iops: {min: 1}\n")
    assert {lim.metric for lim in sc.limits} == {"fio.iops"}


def test_an_infra_on_line_ends_the_run_as_an_infrastructure_error(tmp_path, guest):
    """A known bug of the test bench (QEMU's NVMe missing a doorbell) is not a failure of
    the system under test: the run is an error, which `hil run` retries."""
    guest.say("[   38.08] nvme nvme0: I/O 320 (I/O Cmd) QID 1 timeout, aborting")
    extra = "infra_on: [{regex: 'nvme nvme[0-9]+: I/O [0-9]+ .*timeout'}]\n"
    sc = scenario(tmp_path, "- expect: never\n  timeout: 2\n", extra=extra)
    console = Console(guest.console_fd, guest.launched, tmp_path / "serial.log")
    try:
        with pytest.raises(StepFailed) as e:
            StepRunner(sc, guest, console, "tcg").run()
    finally:
        console.close()
    v = e.value.verdict
    assert v.outcome == "error" and v.category == "infra" and v.exit_code == 3
    assert "QID 1 timeout" in v.reason
