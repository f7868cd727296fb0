"""Results on disk: results/<scenario>/<run-id>/, results/history.sqlite and
results/nightly/<date>/ (layout: docs/results.md, docs/nightly.md).

Only this module knows the layout.  Writers are plain functions over plain data, so
anything that produced a run (hil run, the pytest plugin, nightly) writes the same files.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import re
import secrets
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .paths import REPO, RESULTS

DEFAULT_ROOT = RESULTS  # the results root when none is given


RUN_ID_FORMAT = "%Y%m%dT%H%M%S"  # then .mmm (milliseconds), 'Z', '-', 4 random hex digits
_last_stamp = ""


def new_run_dir(root: Path, scenario: str) -> tuple[str, Path]:
    """A fresh, unique directory, claimed by this process (hil.janitor) until its run.json
    is written.  Ids sort by start time: the UTC start to the millisecond, and within one
    process strictly increasing (two runs in one millisecond get consecutive ones).
    Older ids have no milliseconds (20261121T030000Z-1a2b); parse_run_id reads both."""
    global _last_stamp
    from . import janitor

    base = root / scenario
    base.mkdir(parents=True, exist_ok=True)
    while True:
        now = dt.datetime.now(dt.UTC)
        stamp = now.strftime(RUN_ID_FORMAT) + f".{now.microsecond // 1000:03d}"
        if stamp <= _last_stamp:
            time.sleep(0.001)  # this process made an id this millisecond already
            continue
        _last_stamp = stamp
        run_id = f"{stamp}Z-{secrets.token_hex(2)}"
        path = base / run_id
        try:
            path.mkdir()
        except FileExistsError:
            continue
        janitor.claim(path)
        return run_id, path


def parse_run_id(run_id: str) -> dt.datetime | None:
    """The UTC start time a run id names (either format), or None if it is not one."""
    m = re.fullmatch(r"(\d{8}T\d{6})(?:\.(\d{3}))?Z-[0-9a-f]{4}", run_id)
    if not m:
        return None
    t = dt.datetime.strptime(m.group(1), RUN_ID_FORMAT).replace(tzinfo=dt.UTC)
    return t + dt.timedelta(milliseconds=int(m.group(2) or 0))


def run_started_at(run_id: str) -> str:
    """run.json's ``started_at`` for a run id made by new_run_dir: ISO 8601, UTC, to the
    millisecond, the same instant as the id (so the two never disagree)."""
    t = parse_run_id(run_id)
    if t is None:
        raise ValueError(f"not a run id: {run_id!r}")
    return t.isoformat(timespec="milliseconds")


@functools.cache
def git_info(repo: Path = REPO) -> dict:
    """The commit that ran, asked once per process: every run of one command (a batch,
    a pytest session) is attributed to the commit the command started on."""

    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def host_info() -> dict:
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    if path.name == "run.json":
        # A run directory with its run.json is a finished run: the janitor's claim ends.
        from . import janitor

        janitor.release(path.parent)


def write_junit(path: Path, run: dict) -> None:
    """One <testsuite> per run: a <testcase> per step, plus one for the metric limits."""
    verdict = run["verdict"]
    suite = ET.Element(
        "testsuite",
        name=run["scenario"],
        timestamp=run["started_at"],
        time=f"{run['durations'].get('total_s', 0):.3f}",
        hostname=run["host"]["hostname"],
    )
    props = ET.SubElement(suite, "properties")
    for k, v in (
        ("profile", run["profile"]["name"]),
        ("accel", run["accel"]),
        ("run_id", run["run_id"]),
        ("outcome", verdict["outcome"]),
    ):
        ET.SubElement(props, "property", name=k, value=str(v))
    cls = f"hil.{run['scenario']}"
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    def case(name: str, seconds: float, status: str, message: str = "", text: str = ""):
        counts["tests"] += 1
        tc = ET.SubElement(suite, "testcase", classname=cls, name=name, time=f"{seconds:.3f}")
        if status == "failed":
            counts["failures"] += 1
            ET.SubElement(tc, "failure", message=message, type=verdict["category"]).text = text
        elif status == "error":
            counts["errors"] += 1
            ET.SubElement(tc, "error", message=message, type=verdict["category"]).text = text
        elif status == "skipped":
            counts["skipped"] += 1
            ET.SubElement(tc, "skipped", message=message)

    evidence = "\n".join(verdict.get("evidence", []))
    if verdict["outcome"] == "error" and verdict.get("step") is None:
        case("setup", 0.0, "error", verdict["reason"], evidence)
    for s in run["steps"]:
        name = f"step {s['index'] + 1}: {s['kind']}" + (f" ({s['name']})" if s["name"] else "")
        st = {"passed": "passed", "failed": "failed", "timeout": "failed"}.get(
            s["status"], "skipped"
        )
        if verdict["outcome"] in ("error", "interrupted") and s["index"] == verdict.get("step"):
            st = "error"
        case(
            name,
            s["duration_s"],
            st,
            s["detail"] if st != "passed" else "",
            evidence if st in ("failed", "error") else "",
        )
    if run["limits"]:
        bad = [lim for lim in run["limits"] if not lim["ok"]]
        msg = "; ".join(lim["detail"] for lim in bad)
        case("metric limits", 0.0, "failed" if bad else "passed", msg, msg)
    for k, v in counts.items():
        suite.set(k, str(v))
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def read_run(run_dir: Path) -> dict:
    """run.json of a run directory."""
    return json.loads((Path(run_dir) / "run.json").read_text())


def write_record(rec) -> None:
    """run.json from a hil.record.RunRecord, and junit.xml once it has its verdict."""
    data = rec.to_json()
    write_json(Path(rec.run_dir) / "run.json", data)
    if rec.verdict is not None:
        write_junit(Path(rec.run_dir) / "junit.xml", data)


HISTORY_FILE = "history.sqlite"


def history_path(root: Path) -> Path:
    """The run history database of a results root (hil.history)."""
    return Path(root) / HISTORY_FILE


def link_latest_nightly(report_dir: Path) -> None:
    """results/nightly/latest -> the newest report directory (replaced atomically)."""
    link = report_dir.parent / "latest"
    tmp = report_dir.parent / f".latest-{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(report_dir.name)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)


def nightly_dir(root: Path, date: str) -> Path:
    """results/nightly/<date>/ (a second nightly on one date gets <date>.2, ...)."""
    base = Path(root) / "nightly"
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = base / (date if n == 1 else f"{date}.{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
