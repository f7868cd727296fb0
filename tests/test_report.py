"""Nightly reports from a synthetic history: order of 'what changed', JUnit, HTML, JSON."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

from hil import report
from hil.baseline import compare_batch, exit_status
from hil.history import History

from .nightly_fakes import Nights, run_data


def ok(boot=60.0, idle=1.0):
    return ("pass", {"boot_ms": boot, "cpu_idle": idle})


def test_every_kind_of_change_in_one_night(tmp_path):
    A, B, C, D, E, F = (("sc-" + x, "q35-tcg-bios") for x in "abcdef")
    with History.at(tmp_path) as h:
        n = Nights(h, tmp_path)
        n.night(
            {
                A: [ok()] * 3,
                B: [ok()] * 3,
                C: [("fail", {})],
                D: [("fail", {})],
                E: [ok()],
                F: [ok()],
            }
        )
        batch = n.night(
            {
                A: [("fail", {})] * 3,  # new failure
                B: [ok(90), ok(91), ok(89)],  # boot time regression
                C: [("fail", {})],  # still failing
                D: [ok()],  # fixed
                E: [("error>pass", {"boot_ms": 60.5, "cpu_idle": 1.0})],  # flaky
                F: [("error>error", {})],  # infrastructure error
            }
        )
        comps = compare_batch(h, batch)
        code = exit_status(comps)
        out = tmp_path / "nightly" / "2026-11-02"
        out.mkdir(parents=True)
        s = report.build_summary(
            comps,
            batch_id=batch,
            date="2026-11-02",
            started_at="2026-11-02T03:00:00",
            finished_at="2026-11-02T03:10:00",
            exit_code=code,
            interrupted=False,
            out_dir=out,
            argv=["hil", "nightly"],
        )
        files = report.write_all(s, h, out, nights=14)
    assert code == 1
    status = {k["scenario"]: k["status"] for k in s["keys"]}
    assert status == {
        "sc-a": "new-failure",
        "sc-b": "pass",
        "sc-c": "still-failing",
        "sc-d": "fixed",
        "sc-e": "pass",
        "sc-f": "infra-error",
    }
    assert [k["scenario"] for k in s["keys"]][:2] == ["sc-a", "sc-b"]  # regressions first
    kinds = [line.split("  ")[0] for line in s["changed"]]
    assert kinds == ["NEW FAILURE", "REGRESSION", "INFRA ERROR", "FIXED", "FLAKY"]
    assert s["counts"]["regressions"] == 2 and s["counts"]["flaky"] == 1
    assert s["counts"]["retries"] == 2

    md = files["summary.md"].read_text()
    assert md.startswith(
        "# pxOS nightly 2026-11-02: 2 REGRESSED, 1 infrastructure error, "
        "1 still failing, 1 fixed, 1 flaky"
    )
    assert md.index("NEW FAILURE") < md.index("REGRESSION") < md.index("## Still failing")
    assert "boot time (boot_ms) worse: 60 ms -> 90 ms (+50.0 %)" in md

    suite = ET.parse(files["junit.xml"]).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "3", "1")
    types = {
        tc.get("classname"): [c.get("type") for c in tc if c.tag in ("failure", "error")]
        for tc in suite.iter("testcase")
    }
    assert types["hil.nightly.sc-a"] == ["new-failure"]
    assert types["hil.nightly.sc-b"] == ["metric-regression"]
    assert types["hil.nightly.sc-c"] == ["still-failing"]
    assert types["hil.nightly.sc-f"] == ["infra"]
    assert types["hil.nightly.sc-d"] == types["hil.nightly.sc-e"] == []

    page = files["report.html"].read_text()
    assert page.count('<img alt="trends of') == 6 and "data:image/png;base64," in page
    assert 'class="badge s-new-failure"' in page and 'class="badge s-flaky"' in page
    assert '<span class="worse">' in page
    assert json.loads(files["summary.json"].read_text()) == json.loads(json.dumps(s))


def test_html_escapes_what_it_did_not_write(tmp_path):
    with History.at(tmp_path) as h:
        h.add_batch("nightly-x", "nightly", "2026-11-01T03:00:00.000+00:00")
        d = tmp_path / "run"
        d.mkdir()
        h.record(
            run_data(outcome="fail", reason="saw <script>alert(1)</script> & more"),
            d,
            batch_id="nightly-x",
        )
        comps = compare_batch(h, "nightly-x")
        s = report.build_summary(
            comps,
            batch_id="nightly-x",
            date="d",
            started_at="a",
            finished_at="b",
            exit_code=1,
            interrupted=False,
            out_dir=tmp_path,
            argv=["hil", "nightly", "<x>"],
        )
        page = report.render_html(s, {}, 14)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "&lt;x&gt;" in page


def test_plot_worker_draws_what_render_plots_draws_and_goes_away(tmp_path):
    with History.at(tmp_path) as h:
        n = Nights(h, tmp_path)
        for b in (60, 62, 61):
            batch = n.night({("boot", "p"): [ok(b)]})
        s = report.build_summary(
            compare_batch(h, batch),
            batch_id=batch,
            date="d",
            started_at="a",
            finished_at="b",
            exit_code=0,
            interrupted=False,
            out_dir=tmp_path,
            argv=[],
        )
        data = report.trend_data(h, s, 14)
    assert [p[1] for p in data["boot"]["points"]["boot_ms"]["p"]] == [60, 62, 61]
    with report.PlotWorker() as w:
        uris = w.render(data)
        proc = w._proc
    assert not proc.is_alive() and proc.exitcode == 0
    png = base64.b64decode(uris["boot"].split(",", 1)[1])
    assert png.startswith(b"\x89PNG") and png == base64.b64decode(
        report.render_plots(data)["boot"].split(",", 1)[1]
    )
