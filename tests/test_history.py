"""The run history database: schema, migrations, queries, parallel writers."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from hil import history
from hil.errors import InfraError
from hil.history import History

from .nightly_fakes import Nights, run_data


def test_fresh_database_has_current_schema_and_wal(tmp_path):
    with History(tmp_path / "h.sqlite") as h:
        assert h.schema_version() == history.SCHEMA_VERSION == 2
        assert h.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert h.db.execute("PRAGMA busy_timeout").fetchone()[0] == history.BUSY_TIMEOUT_MS
        tables = {r[0] for r in h.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"batches", "runs", "metrics", "baseline_pins"} <= tables


def test_record_and_read_back(tmp_path):
    with History.at(tmp_path) as h:
        h.add_batch("run-1", "run", "2026-11-21T03:00:00.000+00:00", argv=["hil", "run"])
        d = tmp_path / "boot" / "r1"
        d.mkdir(parents=True)
        data = run_data(metrics={"boot_ms": 66.5, "cpu_idle": 1.0, "flag": True})
        data["gpu"] = {"adapter": "llvmpipe"}
        h.record(data, d, batch_id="run-1", attempt=2, flaky=True)
        (row,) = h.recent("boot")
        assert (row.scenario, row.profile, row.outcome, row.attempt, row.flaky) == (
            "boot",
            "q35-tcg-bios",
            "pass",
            2,
            1,
        )
        assert row.metrics == {"boot_ms": 66.5, "cpu_idle": 1.0}  # booleans are not metrics
        assert row.git_commit == "a" * 40 and row.qemu_version.startswith("QEMU")
        assert row.accel == "tcg" and row.host == "testhost" and row.wgpu_adapter == "llvmpipe"
        assert row.run_dir == str(d.resolve()) and row.total_s == 1.6
        # Recording the same directory again replaces the row, metrics included.
        data["metrics"] = {"boot_ms": 70.0}
        h.record(data, d, batch_id="run-1")
        (row,) = h.recent("boot")
        assert row.metrics == {"boot_ms": 70.0}
        assert h.db.execute("SELECT count(*) FROM metrics").fetchone()[0] == 1
        assert h.batch("run-1").argv == ["hil", "run"]
        assert h.run_by_dir_or_id("r1").id == row.id and h.run_by_dir_or_id(str(d)).id == row.id


def test_migration_from_version_1_keeps_the_data(tmp_path):
    path = tmp_path / "h.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    for stmt in history._statements(history.MIGRATIONS[0]):
        db.execute(stmt)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO batches (id, kind, started_at) VALUES ('b', 'nightly', 'x')")
    db.execute(
        "INSERT INTO runs (batch_id, scenario, profile, outcome, started_at, run_dir)"
        " VALUES ('b', 'boot', 'p', 'pass', 'x', '/r')"
    )
    db.close()
    with History(path) as h:
        assert h.schema_version() == 2
        assert [r.run_dir for r in h.recent("boot")] == ["/r"]
        h.pin("boot", "p", "b", "now", "known good")
        assert h.pinned("boot", "p") == "b"


def test_newer_schema_is_refused_with_advice(tmp_path):
    path = tmp_path / "h.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(InfraError, match="schema version 99, newer than this hil knows"):
        History(path).open()


def test_damaged_file_is_an_infrastructure_error(tmp_path):
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InfraError, match="move it aside"):
        History(path).open()


def _writer(path: str, worker: int, n: int, start) -> None:
    start.wait()
    with History(path) as h:  # every writer also races to create/migrate the schema
        h.add_batch(f"b{worker}", "run", f"2026-11-21T03:00:{worker:02d}.000+00:00")
        for i in range(n):
            d = f"/nonexistent/w{worker}/r{i}"
            h.record(
                run_data(metrics={"boot_ms": float(i), "cpu_idle": 1.0}),
                d,
                batch_id=f"b{worker}",
                repeat_index=i,
            )


def test_parallel_writers_lose_nothing(tmp_path):
    path = tmp_path / "h.sqlite"
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), w, 40, start)) for w in range(6)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    with History(path) as h:
        assert h.schema_version() == history.SCHEMA_VERSION
        assert h.db.execute("SELECT count(*) FROM runs").fetchone()[0] == 240
        assert h.db.execute("SELECT count(*) FROM metrics").fetchone()[0] == 480
        assert h.db.execute("SELECT count(*) FROM batches").fetchone()[0] == 6
        assert h.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_failed_transaction_leaves_nothing(tmp_path):
    with History.at(tmp_path) as h:
        with pytest.raises(RuntimeError):
            with h.transaction() as db:
                db.execute("INSERT INTO batches (id, kind, started_at) VALUES ('x', 'run', 't')")
                raise RuntimeError
        assert h.batch("x") is None


def test_trend_and_previous_batches(tmp_path):
    with History.at(tmp_path) as h:
        n = Nights(h, tmp_path)
        key = ("boot", "p")
        n1 = n.night({key: [("pass", {"boot_ms": 60}), ("pass", {"boot_ms": 70})]})
        n2 = n.night({key: [("fail", {})]})
        n3 = n.night({key: [("error>pass", {"boot_ms": 80})]})
        assert h.previous_batch_with("boot", "p", n3) == n2
        assert h.previous_batch_with("boot", "p", n3, passed=True) == n1
        assert h.previous_batch_with("boot", "p", n1) is None
        trend = h.trend("boot", "p", "boot_ms")
        assert [(m, lo, hi) for _, m, lo, hi in trend] == [(65, 60, 70), (80, 80, 80)]
        (final,) = h.final_runs("boot", "p", n3)
        assert final.attempt == 2 and final.flaky == 1
