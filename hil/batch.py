"""Many runs: scenarios x profiles x repeats, ``jobs`` at a time, with retries.

Each run happens in a process of its own, forked from this one (a fresh process per run,
never a thread): its console reader stamps boot times without competing for a GIL, QEMU's
parent-death signal belongs to that process, and nothing a run leaves in memory reaches
the next one.  A job carries the Plan made before the batch started; the run itself is
``hil.runner.run_scenario``, unchanged; isolation between runs comes from what it already
does per run (its own results directory, pty, QMP socket directory, disk copies and
pcaps).  The job's place in the batch travels into the run, so run.json is written by
the run alone.

Retries: a run that ends in an infrastructure error (outcome ``error``) is run again, up
to ``retries`` more times; a test failure or a timeout is never retried.  A run that
passes only on a retry is *flaky*: its run.json says so (``batch.flaky``), and so do the
history and every report.

The parent records every attempt in the history database (single writer per batch) and
returns the results grouped by (scenario, profile) with medians and spread of the metrics.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import secrets
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

from . import results
from .history import History
from .plan import Plan
from .process import die_with_parent
from .progress import Progress
from .record import BatchInfo
from .runner import RunOptions, run_scenario
from .stats import Stats
from .verdict import ERROR, INTERRUPTED, PASS, is_flaky, worst

_FORK = multiprocessing.get_context("fork")
MAX_JOBS = 100_000  # runs in one batch (scenarios x profiles x repeats)


@dataclass(frozen=True)
class Job:
    plan: Plan
    repeat_index: int = 0  # 0-based
    attempt: int = 1  # 1 = first try
    retry_of: str | None = None  # run id of the attempt this one retries

    @property
    def key(self) -> tuple[str, str]:
        return self.plan.key


@dataclass
class RunResult:
    job: Job
    run_id: str | None
    run_dir: Path | None
    outcome: str
    data: dict  # run.json as finally written
    flaky: bool = False

    @property
    def metrics(self) -> dict:
        return self.data.get("metrics", {})


@dataclass
class Group:
    """All runs of one (scenario, profile) in a batch."""

    scenario: str
    profile: str
    scenario_file: str
    runs: list[RunResult] = field(default_factory=list)  # every attempt, in finishing order

    @property
    def final(self) -> list[RunResult]:
        """The last attempt of each repeat: the runs that count."""
        last: dict[int, RunResult] = {}
        for r in self.runs:
            cur = last.get(r.job.repeat_index)
            if cur is None or r.job.attempt >= cur.job.attempt:
                last[r.job.repeat_index] = r
        return [last[i] for i in sorted(last)]

    @property
    def outcome(self) -> str:
        return worst([r.outcome for r in self.final])

    @property
    def flaky(self) -> bool:
        return is_flaky([(r.outcome, r.flaky) for r in self.final])

    @property
    def retries(self) -> int:
        return sum(1 for r in self.runs if r.job.attempt > 1)

    def stats(self) -> dict[str, Stats]:
        """Metric name -> Stats over the passing final runs."""
        values: dict[str, list[float]] = {}
        for r in self.final:
            if r.outcome != PASS:
                continue
            for k, v in r.metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values.setdefault(k, []).append(v)
        return {k: Stats.of(v) for k, v in values.items()}


@dataclass
class BatchResult:
    batch_id: str
    started_at: str
    finished_at: str
    groups: list[Group]
    interrupted: bool = False

    @property
    def outcome(self) -> str:
        outs = [g.outcome for g in self.groups] or [PASS]
        if self.interrupted:
            outs.append(INTERRUPTED)
        return worst(outs)


@dataclass
class BatchOptions:
    jobs: int = 1
    repeat: int = 1
    retries: int = 1  # extra attempts for an infrastructure error
    kind: str = "run"  # batch kind in the history: run | nightly
    record_history: bool = True
    argv: list[str] = field(default_factory=list)


def new_batch_id(kind: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{kind}-{now.strftime('%Y%m%dT%H%M%S')}Z-{secrets.token_hex(2)}"


class BatchProgress(Progress):
    """Progress of one run inside a batch: lines carry the profile and repeat too."""

    def __init__(self, mode: str, label: str):
        super().__init__(mode)
        self.label = label

    def start(self, scenario, profile, accel, why, run_dir):
        super().start(scenario, profile, accel, why, run_dir)
        if self.mode != "live":
            self.prefix = f"[{self.label}] "


class Batch:
    """Runs jobs in child processes, ``opts.jobs`` at a time.  ``run()`` returns when all
    are done; Ctrl-C/SIGTERM is passed to the running children (each stops its QEMU and
    writes its results), no new run starts, and the result says ``interrupted``."""

    def __init__(
        self,
        plans: list[Plan],
        run_opts: RunOptions,
        opts: BatchOptions,
        progress_mode: str = "plain",
        on_result: Callable[[RunResult], None] = lambda r: None,
    ):
        self.plans = plans
        self.run_opts = run_opts
        self.opts = opts
        self.mode = progress_mode if opts.jobs == 1 else _no_live(progress_mode)
        self.on_result = on_result
        self.batch_id = new_batch_id(opts.kind)
        self.groups: dict[tuple[str, str], Group] = {}
        for p in plans:
            self.groups.setdefault(p.key, Group(*p.key, str(p.scenario.path)))
        # Jobs are made as they start, so a huge --repeat costs nothing up front.
        self._next = ((p, r) for r in range(max(1, opts.repeat)) for p in plans)
        self._pending: deque[Job] = deque()
        self._running: dict[Connection, tuple[multiprocessing.Process, Job]] = {}
        self._history: History | None = None

    def run(self) -> BatchResult:
        started = _now()
        interrupted = False
        if self.opts.record_history:
            self._history = History.at(self.run_opts.results_root)
            self._history.open()
            self._history.add_batch(
                self.batch_id,
                self.opts.kind,
                started,
                git_commit=results.git_info().get("commit"),
                host=results.host_info()["hostname"],
                argv=self.opts.argv,
                jobs=self.opts.jobs,
                repeat=self.opts.repeat,
            )
        _prewarm(self.plans)
        try:
            try:
                self._fill()
                while self._running:
                    self._collect(wait(list(self._running)))
                    self._fill()
            except KeyboardInterrupt:
                interrupted = True
                self._pending.clear()
                self._next = iter(())
                self._stop_children()
            finished = _now()
            if self._history is not None:
                self._history.finish_batch(self.batch_id, finished)
        finally:
            for proc, _ in self._running.values():  # only after an unexpected error
                _kill(proc)
            if self._history is not None:
                self._history.close()
        return BatchResult(
            self.batch_id, started, finished, list(self.groups.values()), interrupted
        )

    # -- children -------------------------------------------------------------
    def _fill(self) -> None:
        """Start runs until ``jobs`` run at once: retries first, then the next jobs."""
        while len(self._running) < max(1, self.opts.jobs):
            if self._pending:
                self._start(self._pending.popleft())
            elif (nxt := next(self._next, None)) is not None:
                self._start(Job(*nxt))
            else:
                return

    def _start(self, job: Job) -> None:
        name, profile = job.key
        label = name
        if len({k[1] for k in self.groups if k[0] == name}) > 1:
            label += f"@{profile}"
        if self.opts.repeat > 1:
            label += f" #{job.repeat_index + 1}"
        if job.attempt > 1:
            label += f" retry {job.attempt - 1}"
        recv, send = _FORK.Pipe(duplex=False)
        sys.stdout.flush()
        sys.stderr.flush()
        info = BatchInfo(
            self.batch_id,
            self.opts.kind,
            job.repeat_index,
            self.opts.repeat,
            job.attempt,
            job.retry_of,
        )
        proc = _FORK.Process(
            target=_child,
            args=(job, info, self.run_opts, self.mode, label, send, os.getpid()),
            name=f"hil-run-{label}",
            daemon=False,
        )
        proc.start()
        send.close()
        self._running[recv] = (proc, job)

    def _collect(self, ready: list) -> None:
        done = []
        for conn in ready:
            proc, job = self._running.pop(conn)
            try:
                run_id, run_dir, data = conn.recv()
            except (EOFError, OSError):
                run_id, run_dir, data = None, None, None
            conn.close()
            proc.join()
            if data is None:
                data = _lost_run(job, proc.exitcode)
            if data["verdict"]["outcome"] == ERROR and job.attempt <= self.opts.retries:
                # Infrastructure errors may be retried; test failures never are.
                self._pending.appendleft(Job(job.plan, job.repeat_index, job.attempt + 1, run_id))
            done.append((job, run_id, Path(run_dir) if run_dir else None, data))
        # Keep the machine busy: the next runs start before the book-keeping of these
        # (after an interruption nothing is pending).
        self._fill()
        for args in done:
            self._finish(*args)

    def _finish(self, job: Job, run_id, run_dir: Path | None, data: dict) -> None:
        outcome = data["verdict"]["outcome"]
        flaky = bool((data.get("batch") or {}).get("flaky"))
        if run_dir is not None and self._history is not None:
            self._history.record(
                data,
                run_dir,
                batch_id=self.batch_id,
                repeat_index=job.repeat_index,
                attempt=job.attempt,
                flaky=flaky,
            )
        res = RunResult(job, run_id, run_dir, outcome, data, flaky)
        self.groups[job.key].runs.append(res)
        self.on_result(res)

    def _stop_children(self) -> None:
        """Pass the interruption on, then collect what the children write."""
        for proc, _ in self._running.values():
            try:
                os.kill(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        while self._running:
            try:
                ready = wait(list(self._running), timeout=60)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting politely
                for proc, _ in self._running.values():
                    _kill(proc)
                continue
            if not ready:
                for proc, _ in self._running.values():
                    _kill(proc)
                continue
            self._collect(ready)


def _prewarm(plans: list[Plan]) -> None:
    """Do once, here, what every run would otherwise do again in its fresh process:
    probe the host and git (cached per process; a fork inherits the cache) and import
    what runs import lazily.  Saves tens of ms per run (benchmarks/suite_bench.py)."""
    from . import host

    host.version(host.QEMU)
    host.kvm()
    for tool in (*host.TOOLS, "setpriv"):
        host.which(tool)
    results.git_info()
    if any(getattr(d, "fill", None) == "lba" for p in plans for d in p.devices):
        try:
            import numpy  # noqa: F401  (NVMe disks filled with LBA numbers)
        except ImportError:
            pass


def _child(
    job: Job, info: BatchInfo, run_opts: RunOptions, mode: str, label: str, conn, parent: int
) -> None:
    """The body of a run's process: one run_scenario, its result back through the pipe."""
    # Die with the parent: SIGTERM becomes KeyboardInterrupt (hil.cli), so QEMU is
    # stopped and the results are written even when the parent was SIGKILLed.
    if not die_with_parent(signal.SIGTERM, parent):
        os._exit(130)
    # The first Ctrl-C/SIGTERM/SIGHUP interrupts the run; later ones (a Ctrl-C reaches
    # both us and the parent, which passes it on) must not disturb the clean-up.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt_once)
    progress = BatchProgress(mode, label)
    rec = run_scenario(job.plan, run_opts, progress, info)
    try:
        conn.send((rec.run_id, str(rec.run_dir), rec.to_json()))
    except (BrokenPipeError, OSError):
        pass
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rec.verdict.exit_code if rec.verdict.exit_code < 256 else 1)


_interrupted = False


def _raise_interrupt_once(signum, frame):
    global _interrupted
    if not _interrupted:
        _interrupted = True
        raise KeyboardInterrupt


def _lost_run(job: Job, exitcode: int | None) -> dict:
    """What we know of a run whose process died without reporting (no run.json)."""
    how = (
        f"was killed by signal {-exitcode}"
        if exitcode and exitcode < 0
        else (f"exited with status {exitcode}")
    )
    return {
        "scenario": job.key[0],
        "profile": {"name": job.key[1]},
        "started_at": _now(),
        "verdict": {
            "outcome": ERROR,
            "reason": f"the process running this scenario {how} before reporting a result",
            "category": "internal",
            "evidence": [],
        },
        "metrics": {},
        "exit_code": 3,
    }


def _kill(proc: multiprocessing.Process) -> None:
    """SIGTERM first (the run stops its QEMU and writes its results), SIGKILL if it
    does not end within 10 s."""
    if proc.is_alive():
        proc.terminate()
        proc.join(10)
    if proc.is_alive():
        proc.kill()
    proc.join(5)


def _no_live(mode: str) -> str:
    # Several runs cannot share one status line; their events interleave as log lines.
    return "plain" if mode == "live" else mode


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def summary_lines(result: BatchResult) -> list[str]:
    """A table of the groups: outcome, runs, medians and spread of boot_ms and cpu_idle."""
    rows = [("outcome", "scenario", "profile", "runs", "boot_ms", "cpu_idle", "")]
    for g in result.groups:
        st = g.stats()
        boot = st.get("boot_ms")
        idle = st.get("cpu_idle")
        outs = [r.outcome for r in g.final]
        runs = f"{outs.count(PASS)}/{len(outs)} pass"
        notes = []
        if g.flaky:
            notes.append("FLAKY")
        if g.retries:
            notes.append(f"{g.retries} retr{'y' if g.retries == 1 else 'ies'}")
        rows.append(
            (
                g.outcome.upper(),
                g.scenario,
                g.profile,
                runs,
                boot.format() if boot else "-",
                idle.format() if idle else "-",
                ", ".join(notes),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
