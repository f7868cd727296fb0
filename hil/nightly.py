"""`hil nightly`: run the suite as one batch, compare it with the history, publish reports.

    batch (hil.batch) -> history rows -> comparison (hil.baseline) -> reports (hil.report)

The exit status says whether anything regressed (docs/exit-codes.md): 0 nothing did,
1 a new failure or a metric regression, 3 an infrastructure error (and no regression),
130 interrupted.  Still-failing scenarios are reported but do not change the status:
they were already known the night before.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import report, results
from .baseline import compare_batch, exit_status
from .batch import Batch, BatchOptions
from .history import History
from .paths import rel
from .plan import Plan
from .runner import RunOptions


@dataclass
class NightlyOptions:
    nights: int = 14  # how many nights the trend plots cover


@dataclass
class NightlyResult:
    exit_code: int
    out_dir: Path
    files: dict[str, Path]
    summary: dict


def run_nightly(
    plans: list[Plan],
    run_opts: RunOptions,
    batch_opts: BatchOptions,
    opts: NightlyOptions,
    progress_mode: str = "plain",
    out: TextIO = sys.stdout,
) -> NightlyResult:
    batch_opts.kind = "nightly"
    batch_opts.record_history = True
    with report.PlotWorker() as plots:
        return _run(plans, run_opts, batch_opts, opts, progress_mode, out, plots)


def _run(plans, run_opts, batch_opts, opts, progress_mode, out, plots) -> NightlyResult:
    result = Batch(plans, run_opts, batch_opts, progress_mode).run()
    root = run_opts.results_root
    date = result.started_at[:10]
    with History.at(root) as history:
        comparisons = compare_batch(history, result.batch_id)
        code = exit_status(comparisons, result.interrupted)
        out_dir = results.nightly_dir(root, date)
        summary = report.build_summary(
            comparisons,
            batch_id=result.batch_id,
            date=date,
            started_at=result.started_at,
            finished_at=result.finished_at,
            exit_code=code,
            interrupted=result.interrupted,
            out_dir=out_dir,
            argv=batch_opts.argv,
        )
        files = report.write_all(summary, history, out_dir, opts.nights, plots.render)
    results.link_latest_nightly(out_dir)
    out.write(_console_summary(summary, out_dir))
    out.flush()
    return NightlyResult(code, out_dir, files, summary)


def _console_summary(s: dict, out_dir: Path) -> str:
    lines = ["", f"nightly {s['date']}: {report.headline(s)}"]
    lines += [f"  {ln}" for ln in s["changed"]] or ["  nothing changed since the baseline"]
    lines.append(
        f"  report: {rel(out_dir / 'report.html')} (summary.md, junit.xml, summary.json beside it)"
    )
    lines.append(f"  exit status {s['exit_code']}")
    return "\n".join(lines) + "\n"
