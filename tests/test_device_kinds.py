"""Device kinds' own judgement, on real files: QEMU's NVMe error trace in qemu.log."""

from __future__ import annotations

import textwrap

from hil.devices import DEVICES, AfterContext
from hil.plan import make_plan
from hil.scenario import load_scenario

# Lines as QEMU 7.2's log trace backend writes them to the -D file.
LOG = """\
pci_nvme_ub_db_wr_invalid_sq submission queue doorbell write for nonexistent queue, sqid=5, ignoring
pci_nvme_err_invalid_lba_range Invalid LBA start=4096 len=8 limit=4096
"""


def plan_with(tmp_path, nvme: str):
    p = tmp_path / "s.yaml"
    p.write_text(
        textwrap.dedent(f"""\
        profile: q35-tcg-bios
        devices:
          - nvme: {nvme}
        steps:
          - expect: '@stage ready'
        """)
    )
    return make_plan(load_scenario(p))


def findings(tmp_path, nvme: str, outcome: str = "pass"):
    plan = plan_with(tmp_path, nvme)
    (tmp_path / "qemu.log").write_text(LOG)
    ctx = AfterContext(plan, tmp_path, [], outcome)
    (spec,) = plan.devices
    return DEVICES["nvme"].after(spec, ctx)


def test_nvme_error_trace_fails_a_passing_run_and_is_quoted(tmp_path):
    (f,) = findings(tmp_path, "{size: 1M}")
    assert f.outcome == "fail" and f.category == "device-error"
    assert "pci_nvme_ub_db_wr_invalid_sq submission queue doorbell" in f.reason
    assert "(and 1 more in qemu.log)" in f.reason and len(f.evidence) == 2


def test_allowed_trace_lines_do_not_fail(tmp_path):
    allowed = "{size: 1M, errors_allowed: [pci_nvme_err_invalid_lba_range, {regex: 'sqid=5'}]}"
    assert findings(tmp_path, allowed) == []


def test_after_a_failed_run_the_trace_is_a_note(tmp_path):
    (f,) = findings(tmp_path, "{size: 1M}", outcome="fail")
    assert f.outcome == "info"


def test_a_clean_log_finds_nothing(tmp_path):
    plan = plan_with(tmp_path, "{size: 1M}")
    (tmp_path / "qemu.log").write_text("pci_nvme_mmio_read addr 0x0 size 4\n")
    (spec,) = plan.devices
    assert DEVICES["nvme"].after(spec, AfterContext(plan, tmp_path, [], "pass")) == []
