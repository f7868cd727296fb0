"""Run history: every run's verdict and metrics in an embedded SQLite database.

``results/history.sqlite`` (next to the run directories it indexes; docs/nightly.md has
the schema).  The database is written by whatever produced a run (``hil run``, ``hil
nightly``, the pytest plugin), often by several processes at once, so:

* WAL journal and a generous busy timeout: readers never block writers, writers wait
  for each other instead of failing with "database is locked";
* every write is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front,
  so two writers cannot deadlock upgrading a read lock);
* the schema version is ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes a database
  from version i to i+1, inside the same kind of transaction, so two processes opening a
  fresh database migrate it exactly once.

Only this module writes SQL.  Callers hand it run.json data (plain dicts) and get plain
rows back (``RunRow``), so nothing downstream depends on the database layout.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import results
from .errors import InfraError

FILENAME = results.HISTORY_FILE
BUSY_TIMEOUT_MS = 60_000

# MIGRATIONS[i] takes the schema from version i to version i + 1.  Append only: a
# released migration is never edited (databases in the field already ran it).
MIGRATIONS: list[str] = [
    # 0 -> 1: batches, runs and their metrics
    """
    CREATE TABLE batches (
        id          TEXT PRIMARY KEY,   -- e.g. nightly-2026-11-21T0300Z-1a2b
        kind        TEXT NOT NULL,      -- run | nightly | pytest
        started_at  TEXT NOT NULL,      -- UTC, ISO 8601
        finished_at TEXT,
        git_commit  TEXT,
        host        TEXT,
        argv        TEXT,               -- JSON list: the command line
        jobs        INTEGER,
        repeat      INTEGER
    );
    CREATE TABLE runs (
        id            INTEGER PRIMARY KEY,
        batch_id      TEXT REFERENCES batches(id),
        scenario      TEXT NOT NULL,
        profile       TEXT NOT NULL,
        outcome       TEXT NOT NULL,    -- pass | fail | error | timeout | interrupted
        category      TEXT,
        reason        TEXT,
        exit_code     INTEGER,
        started_at    TEXT NOT NULL,
        build_s       REAL,
        machine_s     REAL,
        total_s       REAL,
        git_commit    TEXT,
        git_dirty     INTEGER,
        qemu_version  TEXT,
        accel         TEXT,
        host          TEXT,
        wgpu_adapter  TEXT,             -- NULL until a run uses the virtual GPU
        image_key     TEXT,
        repeat_index  INTEGER NOT NULL DEFAULT 0,
        attempt       INTEGER NOT NULL DEFAULT 1,
        flaky         INTEGER NOT NULL DEFAULT 0,
        run_dir       TEXT NOT NULL UNIQUE
    );
    CREATE INDEX runs_by_key ON runs (scenario, profile, started_at);
    CREATE INDEX runs_by_batch ON runs (batch_id);
    CREATE TABLE metrics (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        name   TEXT NOT NULL,
        value  REAL NOT NULL,
        PRIMARY KEY (run_id, name)
    ) WITHOUT ROWID;
    """,
    # 1 -> 2: pinned baselines
    """
    CREATE TABLE baseline_pins (
        scenario  TEXT NOT NULL,
        profile   TEXT NOT NULL,
        batch_id  TEXT NOT NULL REFERENCES batches(id),
        pinned_at TEXT NOT NULL,
        note      TEXT,
        PRIMARY KEY (scenario, profile)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_RUN_COLUMNS = (
    "batch_id",
    "scenario",
    "profile",
    "outcome",
    "category",
    "reason",
    "exit_code",
    "started_at",
    "build_s",
    "machine_s",
    "total_s",
    "git_commit",
    "git_dirty",
    "qemu_version",
    "accel",
    "host",
    "wgpu_adapter",
    "image_key",
    "repeat_index",
    "attempt",
    "flaky",
    "run_dir",
)


@dataclass
class RunRow:
    """One run as the history knows it."""

    id: int
    batch_id: str | None
    scenario: str
    profile: str
    outcome: str
    category: str | None
    reason: str | None
    exit_code: int | None
    started_at: str
    build_s: float | None
    machine_s: float | None
    total_s: float | None
    git_commit: str | None
    git_dirty: int | None
    qemu_version: str | None
    accel: str | None
    host: str | None
    wgpu_adapter: str | None
    image_key: str | None
    repeat_index: int
    attempt: int
    flaky: int
    run_dir: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchRow:
    id: str
    kind: str
    started_at: str
    finished_at: str | None
    git_commit: str | None
    host: str | None
    argv: list[str]
    jobs: int | None
    repeat: int | None


def row_from_run(data: dict, run_dir: Path, **batch: object) -> dict:
    """run.json data -> the column values of a ``runs`` row (plus ``metrics``)."""
    v = data.get("verdict", {})
    d = data.get("durations", {})
    gpu = data.get("gpu") or {}
    row = {
        "batch_id": batch.get("batch_id"),
        "scenario": data["scenario"],
        "profile": (data.get("profile") or {}).get("name", "?"),
        "outcome": v.get("outcome", "error"),
        "category": v.get("category") or None,
        "reason": v.get("reason"),
        "exit_code": data.get("exit_code"),
        "started_at": data["started_at"],
        "build_s": d.get("build_s"),
        "machine_s": d.get("machine_s"),
        "total_s": d.get("total_s"),
        "git_commit": (data.get("git") or {}).get("commit"),
        "git_dirty": _bool_int((data.get("git") or {}).get("dirty")),
        "qemu_version": (data.get("qemu") or {}).get("version"),
        "accel": data.get("accel"),
        "host": (data.get("host") or {}).get("hostname"),
        "wgpu_adapter": _text(gpu.get("adapter")) if isinstance(gpu, dict) else None,
        "image_key": (data.get("image") or {}).get("key"),
        "repeat_index": int(batch.get("repeat_index", 0)),
        "attempt": int(batch.get("attempt", 1)),
        "flaky": int(bool(batch.get("flaky", False))),
        "run_dir": str(Path(run_dir).resolve()),
    }
    row["metrics"] = {
        k: float(val)
        for k, val in (data.get("metrics") or {}).items()
        if isinstance(val, (int, float)) and not isinstance(val, bool)
    }
    return row


def _text(x) -> str | None:
    return x if x is None or isinstance(x, str) else json.dumps(x, sort_keys=True)


def _bool_int(x) -> int | None:
    return None if x is None else int(bool(x))


class History:
    """The history database of one results root.  A context manager: the connection is
    closed on exit.  Opening creates or migrates the database."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.db: sqlite3.Connection | None = None

    @classmethod
    def at(cls, results_root: Path) -> History:
        return cls(results.history_path(results_root))

    # -- lifetime -------------------------------------------------------------
    def __enter__(self) -> History:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            self.db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._set_wal()
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.close()
            raise InfraError(
                f"the run history {self.path} cannot be used: {e}. If the file is "
                "damaged, move it aside (runs are still in their directories); `hil` "
                "starts a new one."
            ) from None

    def _set_wal(self) -> None:
        """Switch to the WAL journal, retrying while another process holds the lock.
        On a fresh file the switch needs an exclusive lock and SQLite does not call the
        busy handler for it: of six processes opening a new history at once, one got
        "database is locked" at once (tests/test_history.py, about 1 run in 3 under
        load). Bounded by the same busy timeout as every other wait."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.005
        while True:
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the write lock from its start."""
        assert self.db is not None, "History used outside its `with`"
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self, target: int = SCHEMA_VERSION) -> None:
        if self.schema_version() == target:
            return
        with self.transaction() as db:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InfraError(
                    f"the run history {self.path} has schema version {version}, newer "
                    f"than this hil knows ({SCHEMA_VERSION}). Use the hil that wrote it, "
                    "or give this one another --results directory."
                )
            for i in range(version, target):
                for stmt in _statements(MIGRATIONS[i]):
                    db.execute(stmt)
                db.execute(f"PRAGMA user_version = {i + 1}")

    # -- writing --------------------------------------------------------------
    def add_batch(
        self,
        batch_id: str,
        kind: str,
        started_at: str,
        *,
        git_commit: str | None = None,
        host: str | None = None,
        argv: list[str] | None = None,
        jobs: int | None = None,
        repeat: int | None = None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO batches (id, kind, started_at, git_commit, host, argv,"
                " jobs, repeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    kind,
                    started_at,
                    git_commit,
                    host,
                    json.dumps(argv or []),
                    jobs,
                    repeat,
                ),
            )

    def finish_batch(self, batch_id: str, finished_at: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE batches SET finished_at = ? WHERE id = ?", (finished_at, batch_id))

    def record(self, data: dict, run_dir: Path, **batch: object) -> int:
        """Add one run (its run.json data); returns its row id.  Recording the same run
        directory again replaces the earlier row (a re-import is harmless)."""
        row = row_from_run(data, run_dir, **batch)
        metrics = row.pop("metrics")
        cols = ", ".join(_RUN_COLUMNS)
        marks = ", ".join("?" for _ in _RUN_COLUMNS)
        with self.transaction() as db:
            db.execute("DELETE FROM runs WHERE run_dir = ?", (row["run_dir"],))
            cur = db.execute(
                f"INSERT INTO runs ({cols}) VALUES ({marks})",
                tuple(row[c] for c in _RUN_COLUMNS),
            )
            run_id = cur.lastrowid
            db.executemany(
                "INSERT INTO metrics (run_id, name, value) VALUES (?, ?, ?)",
                [(run_id, k, v) for k, v in sorted(metrics.items())],
            )
        return run_id

    def pin(self, scenario: str, profile: str, batch_id: str, pinned_at: str, note: str = ""):
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO baseline_pins (scenario, profile, batch_id, pinned_at,"
                " note) VALUES (?, ?, ?, ?, ?)",
                (scenario, profile, batch_id, pinned_at, note),
            )

    def unpin(self, scenario: str, profile: str | None = None) -> int:
        with self.transaction() as db:
            if profile is None:
                cur = db.execute("DELETE FROM baseline_pins WHERE scenario = ?", (scenario,))
            else:
                cur = db.execute(
                    "DELETE FROM baseline_pins WHERE scenario = ? AND profile = ?",
                    (scenario, profile),
                )
            return cur.rowcount

    # -- reading --------------------------------------------------------------
    def _rows(
        self,
        where: str,
        args: tuple,
        order: str = "started_at DESC, id DESC",
        limit: int | None = None,
    ) -> list[RunRow]:
        sql = f"SELECT id, {', '.join(_RUN_COLUMNS)} FROM runs WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = [RunRow(*r) for r in self.db.execute(sql, args).fetchall()]
        if rows:
            ids = [r.id for r in rows]
            by_id = {r.id: r for r in rows}
            for chunk in range(0, len(ids), 500):
                part = ids[chunk : chunk + 500]
                q = ",".join("?" * len(part))
                for run_id, name, value in self.db.execute(
                    f"SELECT run_id, name, value FROM metrics WHERE run_id IN ({q})", part
                ):
                    by_id[run_id].metrics[name] = value
        return rows

    def recent(self, scenario: str, profile: str | None = None, limit: int = 20) -> list[RunRow]:
        """Newest first."""
        if profile is None:
            return self._rows("scenario = ?", (scenario,), limit=limit)
        return self._rows("scenario = ? AND profile = ?", (scenario, profile), limit=limit)

    def scenarios(self) -> list[str]:
        """Every scenario name with a recorded run."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT scenario FROM runs ORDER BY 1")]

    def batch_runs(self, batch_id: str) -> list[RunRow]:
        return self._rows("batch_id = ?", (batch_id,), order="scenario, profile, repeat_index, id")

    def runs_of(self, scenario: str, profile: str, batch_id: str) -> list[RunRow]:
        return self._rows(
            "scenario = ? AND profile = ? AND batch_id = ?",
            (scenario, profile, batch_id),
            order="repeat_index, attempt, id",
        )

    def batch(self, batch_id: str) -> BatchRow | None:
        r = self.db.execute(
            "SELECT id, kind, started_at, finished_at, git_commit, host, argv, jobs, repeat"
            " FROM batches WHERE id = ?",
            (batch_id,),
        ).fetchone()
        if r is None:
            return None
        return BatchRow(*r[:6], json.loads(r[6] or "[]"), r[7], r[8])

    def batches(self, kind: str, before: str | None = None, limit: int = 14) -> list[BatchRow]:
        """Batches of one kind, newest first (``before``: started strictly earlier)."""
        sql = (
            "SELECT id, kind, started_at, finished_at, git_commit, host, argv, jobs, repeat"
            " FROM batches WHERE kind = ?"
        )
        args: list = [kind]
        if before is not None:
            sql += " AND started_at < ?"
            args.append(before)
        sql += f" ORDER BY started_at DESC, rowid DESC LIMIT {int(limit)}"
        return [
            BatchRow(*r[:6], json.loads(r[6] or "[]"), r[7], r[8])
            for r in self.db.execute(sql, args)
        ]

    def final_runs(self, scenario: str, profile: str, batch_id: str) -> list[RunRow]:
        """The runs of one key in one batch that count: the last attempt of each repeat."""
        last: dict[int, RunRow] = {}
        for r in self.runs_of(scenario, profile, batch_id):
            if r.repeat_index not in last or r.attempt >= last[r.repeat_index].attempt:
                last[r.repeat_index] = r
        return [last[i] for i in sorted(last)]

    def previous_batch_with(
        self,
        scenario: str,
        profile: str,
        before_batch: str,
        *,
        passed: bool = False,
        kind: str | None = None,
    ) -> str | None:
        """The newest batch, other than ``before_batch`` and started before it, holding a
        decisive run of this key (pass/fail/timeout; infrastructure errors and interrupted
        runs say nothing about the system under test).  ``passed``: only a batch in which
        every counted run of the key passed.  ``kind``: only batches of that kind."""
        start = self.db.execute(
            "SELECT started_at, rowid FROM batches WHERE id = ?", (before_batch,)
        ).fetchone()
        before, before_row = start if start else ("9999", 1 << 62)
        cands = self.db.execute(
            "SELECT DISTINCT r.batch_id, b.started_at, b.rowid FROM runs r JOIN batches b"
            " ON b.id = r.batch_id WHERE r.scenario = ? AND r.profile = ? AND r.batch_id != ?"
            " AND (b.started_at < ? OR (b.started_at = ? AND b.rowid < ?))"
            " AND r.outcome IN ('pass', 'fail', 'timeout')"
            " AND (? IS NULL OR b.kind = ?)"
            " ORDER BY b.started_at DESC, b.rowid DESC",
            (scenario, profile, before_batch, before, before, before_row, kind, kind),
        ).fetchall()
        for batch_id, _, _ in cands:
            if not passed:
                return batch_id
            finals = self.final_runs(scenario, profile, batch_id)
            if finals and all(r.outcome == "pass" for r in finals):
                return batch_id
        return None

    def pinned(self, scenario: str, profile: str) -> str | None:
        r = self.db.execute(
            "SELECT batch_id FROM baseline_pins WHERE scenario = ? AND profile = ?",
            (scenario, profile),
        ).fetchone()
        return r[0] if r else None

    def pins(self) -> list[tuple[str, str, str, str, str]]:
        return self.db.execute(
            "SELECT scenario, profile, batch_id, pinned_at, coalesce(note, '')"
            " FROM baseline_pins ORDER BY scenario, profile"
        ).fetchall()

    def run_by_dir_or_id(self, ref: str) -> RunRow | None:
        """A run by its directory (any path to it) or by its run id (the dir name)."""
        p = Path(ref)
        if p.exists():
            rows = self._rows("run_dir = ?", (str(p.resolve()),), limit=1)
        else:
            rows = self._rows("run_dir LIKE ?", (f"%/{ref}",), limit=2)
            if len(rows) > 1:
                return None
        return rows[0] if rows else None

    def trend(
        self,
        scenario: str,
        profile: str,
        metric: str,
        kind: str = "nightly",
        nights: int = 14,
        before: str | None = None,
    ) -> list[tuple[str, float, float, float]]:
        """(batch started_at, median, min, max) of ``metric`` over the passing counted runs
        of the last ``nights`` batches of ``kind`` (started before ``before``, if given),
        oldest first."""
        out = []
        for b in reversed(self.batches(kind, before=before, limit=nights)):
            vals = [
                r.metrics[metric]
                for r in self.final_runs(scenario, profile, b.id)
                if r.outcome == "pass" and metric in r.metrics
            ]
            if vals:
                out.append((b.started_at, statistics.median(vals), min(vals), max(vals)))
        return out


def _statements(script: str) -> list[str]:
    """Split a migration into statements (they contain no ';' in literals)."""
    lines = [ln.split("--")[0] for ln in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
