"""`pytest scenarios/` through hil.pytest_plugin: items, verdicts, metrics, xdist, JUnit."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from hil.history import History

from .conftest import REPO


def pytest_run(hil, *args):
    env = {k: v for k, v in hil.env.items() if k != "PXOS_HIL_PYTEST_BATCH"}
    # pytest keeps its own temporary directories (pytest-of-<user>) in TMPDIR: give it one
    # of its own, and check below that hil left nothing else there.
    env["TMPDIR"] = str(hil.tmp_path / "pytest-tmp")
    os.makedirs(env["TMPDIR"], exist_ok=True)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "hil.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(hil.tmp_path),
            "--hil-results",
            str(hil.results),
            *args,
        ],
        cwd=hil.tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_scenarios_are_items_with_verdicts_and_metrics(hil):
    suite = hil.tmp_path / "suite"
    suite.mkdir()
    bad = hil.scenario("""\
profile: q35-tcg-bios
steps:
  - expect: '@stage ready'
    timeout: 30
  - expect: 'no such line'
    timeout: 1
""")
    bad = bad.rename(suite / bad.name)
    (suite / "invalid.yaml").write_text(
        "name: invalid\nprofile: q35-tcg-bios\nsteps:\n  - expct: x\n"
    )
    (suite / "profile-like.yaml").write_text("machine: q35\naccel: tcg\n")  # not collected
    junit = hil.tmp_path / "junit.xml"
    r = pytest_run(
        hil,
        str(REPO / "scenarios" / "boot.yaml"),
        str(suite),
        "--hil-profile",
        "q35-tcg-bios",
        "--hil-profile",
        "q35-tcg-pvh",
        "-n",
        "2",
        f"--junitxml={junit}",
        "-rA",
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "4 failed, 2 passed" in r.stdout, r.stdout
    assert [p.name for p in (hil.tmp_path / "pytest-tmp").iterdir()] == [
        f"pytest-of-{getpass.getuser()}"
    ]
    assert "no line matching 'no such line' within 1 s" in r.stdout
    assert "invalid.yaml:4: steps[0]: this step has no kind (did you mean 'expect'?)" in r.stdout
    assert "profile-like" not in r.stdout
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) >= {"boot[q35-tcg-bios]", "boot[q35-tcg-pvh]"}
    props = {p.get("name"): p.get("value") for p in cases["boot[q35-tcg-pvh]"].iter("property")}
    assert props["outcome"] == "pass" and props["profile"] == "q35-tcg-pvh"
    assert float(props["metric.boot_ms"]) > 0 and os.path.isdir(props["run_dir"])
    with History.at(hil.results) as h:
        rows = h.recent("boot") + h.recent(bad.stem)
        batches = {r.batch_id for r in rows}
        assert len(rows) == 4 and len(batches) == 1  # one session = one batch, across workers
        assert h.batch(batches.pop()).kind == "pytest"
