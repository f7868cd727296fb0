"""Run ids sort by start time, even many in one second (issue 9: a flaky batch test)."""

from __future__ import annotations

import datetime as dt

from hil import results
from hil.janitor import OWNER_FILE


def test_ids_made_in_one_second_sort_by_creation(tmp_path):
    made = [results.new_run_dir(tmp_path, "s")[0] for _ in range(50)]
    assert made == sorted(made) and len(set(made)) == 50
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == made


def test_an_id_names_its_start_to_the_millisecond(tmp_path):
    before = dt.datetime.now(dt.UTC)
    run_id, path = results.new_run_dir(tmp_path, "s")
    after = dt.datetime.now(dt.UTC)
    t = results.parse_run_id(run_id)
    assert before - dt.timedelta(milliseconds=1) <= t <= after
    assert results.run_started_at(run_id) == t.isoformat(timespec="milliseconds")
    assert path.name == run_id and (path / OWNER_FILE).exists()


def test_old_ids_still_parse():
    old = "20261121T030000Z-1a2b"
    assert results.parse_run_id(old) == dt.datetime(2026, 11, 21, 3, 0, 0, tzinfo=dt.UTC)
    newer = "20261121T030000.001Z-0000"
    assert results.parse_run_id(newer) > results.parse_run_id(old)
    assert results.parse_run_id("20261121T030000.001Z-00") is None
    assert results.parse_run_id("nightly") is None


def test_writing_run_json_ends_the_claim(tmp_path):
    _, path = results.new_run_dir(tmp_path, "s")
    results.write_json(path / "run.json", {})
    assert not (path / OWNER_FILE).exists()
