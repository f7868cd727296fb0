"""Nightly reports: results/nightly/<date>/{summary.json, summary.md, report.html, junit.xml}.

``build_summary`` turns the comparisons into one plain dict (what summary.json holds);
every other file is rendered from that dict (plus trend data from the history for the
plots), so the four files cannot disagree.  Layout and keys: docs/nightly.md.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from . import results
from .baseline import (
    FIXED,
    INFRA,
    INTERRUPTED_,
    NEW_FAILURE,
    PASSING,
    RULES,
    STILL_FAILING,
    KeyComparison,
)
from .history import History

SCHEMA = 1
TREND_METRICS = ("boot_ms", "cpu_idle")
STATUS_ORDER = [NEW_FAILURE, INFRA, INTERRUPTED_, STILL_FAILING, FIXED, PASSING]


# ----------------------------------------------------------------- the data


def build_summary(
    comparisons: list[KeyComparison],
    *,
    batch_id: str,
    date: str,
    started_at: str,
    finished_at: str,
    exit_code: int,
    interrupted: bool,
    out_dir: Path,
    argv: list[str],
) -> dict:
    keys = [_key_json(c, out_dir) for c in sorted(comparisons, key=_order)]
    counts: dict[str, int] = {s: 0 for s in STATUS_ORDER}
    for c in comparisons:
        counts[c.status] = counts.get(c.status, 0) + 1
    counts.update(
        keys=len(comparisons),
        regressions=sum(c.regression for c in comparisons),
        metric_regressions=sum(bool(c.metric_regressions) for c in comparisons),
        flaky=sum(c.flaky for c in comparisons),
        runs=sum(len(c.attempts) for c in comparisons),
        retries=sum(1 for c in comparisons for r in c.attempts if r.attempt > 1),
    )
    first = next((r for c in comparisons for r in c.runs), None)
    return {
        "schema": SCHEMA,
        "batch_id": batch_id,
        "date": date,
        "started_at": started_at,
        "finished_at": finished_at,
        "exit_code": exit_code,
        "interrupted": interrupted,
        "command": argv,
        "git": {"commit": first.git_commit, "dirty": bool(first.git_dirty)} if first else {},
        "host": first.host if first else None,
        "qemu_version": first.qemu_version if first else None,
        "counts": counts,
        "changed": changed_lines(comparisons),
        "keys": keys,
    }


def _order(c: KeyComparison):
    reg = 0 if c.regression else 1
    return (reg, STATUS_ORDER.index(c.status), c.scenario, c.profile)


def changed_lines(comparisons: list[KeyComparison]) -> list[str]:
    """What changed since the baseline, most important first (one line each)."""
    out = []
    for c in sorted(comparisons, key=_order):
        k = f"{c.scenario} [{c.profile}]"
        if c.status == NEW_FAILURE:
            was = f"was {c.previous_outcome}" if c.previous_outcome else "never ran before"
            out.append(f"NEW FAILURE  {k}: {c.outcome} ({was}): {c.reason}")
        for m in c.metric_regressions:
            out.append(f"REGRESSION   {k}: {m.sentence()}")
    for c in sorted(comparisons, key=_order):
        k = f"{c.scenario} [{c.profile}]"
        if c.status == INFRA:
            out.append(f"INFRA ERROR  {k}: {c.reason}")
        if c.status == FIXED:
            out.append(f"FIXED        {k}: passes again (was {c.previous_outcome})")
        if c.flaky:
            out.append(f"FLAKY        {k}: {_flaky_why(c)}")
        for m in c.changes:
            if m.verdict == "improvement":
                out.append(f"IMPROVED     {k}: {m.sentence()}")
    return out


def _flaky_why(c: KeyComparison) -> str:
    retried = [r for r in c.runs if r.flaky]
    if retried:
        return f"passed only on retry ({len(retried)} of {len(c.runs)} runs)"
    outs = [r.outcome for r in c.runs]
    return f"repeats disagree: {', '.join(outs)}"


def _key_json(c: KeyComparison, out_dir: Path) -> dict:
    runs = []
    for r in c.attempts:
        rd = Path(r.run_dir)
        try:
            arts = results.read_run(rd).get("artifacts", {})
        except (OSError, ValueError):
            arts = {}
        runs.append(
            {
                "run_id": rd.name,
                "run_dir": _rel(rd, out_dir),
                "outcome": r.outcome,
                "reason": r.reason,
                "repeat_index": r.repeat_index,
                "attempt": r.attempt,
                "flaky": bool(r.flaky),
                "counted": any(x.id == r.id for x in c.runs),
                "accel": r.accel,
                "total_s": r.total_s,
                "metrics": {k: r.metrics[k] for k in TREND_METRICS if k in r.metrics},
                "artifacts": {name: _rel(rd / f, out_dir) for name, f in sorted(arts.items())},
            }
        )
    return {
        "scenario": c.scenario,
        "profile": c.profile,
        "status": c.status,
        "outcome": c.outcome,
        "regression": c.regression,
        "flaky": c.flaky,
        "reason": c.reason,
        "previous_outcome": c.previous_outcome,
        "previous_batch": c.previous_batch,
        "baseline_batch": c.baseline_batch,
        "baseline_pinned": c.baseline_pinned,
        "note": c.note,
        "metrics": {k: s.to_json() for k, s in c.stats.items()},
        "changes": [m.to_json() for m in c.changes],
        "runs": runs,
    }


def _rel(p: Path, start: Path) -> str:
    return os.path.relpath(Path(p).resolve(), Path(start).resolve())


# ------------------------------------------------------------------ writing


def write_all(
    summary: dict,
    history: History,
    out_dir: Path,
    nights: int,
    render: Callable[[dict], dict[str, str]] | None = None,
) -> dict[str, Path]:
    """The four files; ``render`` draws the plots (default: here, ``render_plots``)."""
    out_dir = Path(out_dir)
    files = {
        "summary.json": out_dir / "summary.json",
        "summary.md": out_dir / "summary.md",
        "junit.xml": out_dir / "junit.xml",
        "report.html": out_dir / "report.html",
    }
    results.write_json(files["summary.json"], summary)
    files["summary.md"].write_text(render_markdown(summary))
    write_junit(files["junit.xml"], summary)
    plots = (render or render_plots)(trend_data(history, summary, nights))
    files["report.html"].write_text(render_html(summary, plots, nights))
    return files


def render_markdown(s: dict) -> str:
    c = s["counts"]
    lines = [f"# pxOS nightly {s['date']}: {headline(s)}", ""]
    lines += ["## What changed since the baseline", ""]
    lines += [f"- `{ln}`" for ln in s["changed"]] or [
        "- nothing: every result and metric as before"
    ]
    still = [k for k in s["keys"] if k["status"] == STILL_FAILING]
    if still:
        lines += ["", "## Still failing", ""]
        lines += [
            f"- {k['scenario']} [{k['profile']}]: {k['outcome']} since before "
            f"{k['previous_batch']}: {k['reason']}"
            for k in still
        ]
    lines += [
        "",
        "## All results",
        "",
        "| scenario | profile | status | runs | boot_ms | cpu_idle | baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in s["keys"]:
        counted = [r for r in k["runs"] if r["counted"]]
        npass = sum(r["outcome"] == "pass" for r in counted)
        flag = " (flaky)" if k["flaky"] else ""
        base = k["baseline_batch"] or "none"
        if k["baseline_pinned"]:
            base += " (pinned)"
        lines.append(
            f"| {k['scenario']} | {k['profile']} | {k['status']}{flag} | "
            f"{npass}/{len(counted)} pass | {_metric_cell(k, 'boot_ms')} | "
            f"{_metric_cell(k, 'cpu_idle')} | {base} |"
        )
    lines += [
        "",
        f"{c['keys']} scenario/profile pairs, {c['runs']} runs ({c['retries']} retries), "
        f"exit status {s['exit_code']}. Batch `{s['batch_id']}`, commit "
        f"`{(s['git'].get('commit') or '?')[:12]}`, host {s['host']}, {s['qemu_version']}.",
        "",
        "Details, trend plots and links to every serial log: [report.html](report.html).",
        "",
    ]
    return "\n".join(lines)


def headline(s: dict) -> str:
    c = s["counts"]
    if s["interrupted"]:
        return "INTERRUPTED (partial results)"
    parts = []
    if c["regressions"]:
        parts.append(f"{c['regressions']} REGRESSED")
    if c[INFRA]:
        parts.append(f"{c[INFRA]} infrastructure error{'s' * (c[INFRA] != 1)}")
    if c[STILL_FAILING]:
        parts.append(f"{c[STILL_FAILING]} still failing")
    if c[FIXED]:
        parts.append(f"{c[FIXED]} fixed")
    if c["flaky"]:
        parts.append(f"{c['flaky']} flaky")
    return ", ".join(parts) if parts else f"all {c['keys']} passing, no regressions"


def _metric_cell(k: dict, name: str) -> str:
    st = k["metrics"].get(name)
    if not st:
        return "-"
    txt = _fmt(name, st["median"])
    if st["n"] > 1 and st["min"] != st["max"]:
        txt += f" [{_fmt(name, st['min'])}..{_fmt(name, st['max'])}]"
    ch = next((m for m in k["changes"] if m["metric"] == name), None)
    if ch and ch["baseline"]["median"]:
        rel = (ch["current"]["median"] - ch["baseline"]["median"]) / ch["baseline"]["median"]
        mark = {"regression": " WORSE", "improvement": " better", "same": ""}[ch["verdict"]]
        txt += f" ({rel * 100:+.1f} %{mark})"
    return txt


def _fmt(name: str, v: float) -> str:
    if name == "cpu_idle":
        return f"{v * 100:.2f} %"
    if name == "boot_ms":
        return f"{v:.1f} ms"
    return f"{v:g}"


def write_junit(path: Path, s: dict) -> None:
    """One <testcase> per (scenario, profile): failed when it failed or a metric regressed,
    an error for an infrastructure error; properties carry status and medians."""
    suite = ET.Element("testsuite", name="hil-nightly", timestamp=s["started_at"])
    if s.get("host"):
        suite.set("hostname", s["host"])
    props = ET.SubElement(suite, "properties")
    for k, v in (("batch_id", s["batch_id"]), ("git_commit", s["git"].get("commit") or "")):
        ET.SubElement(props, "property", name=k, value=str(v))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total = 0.0
    for k in s["keys"]:
        secs = sum(r["total_s"] or 0 for r in k["runs"])
        total += secs
        counts["tests"] += 1
        tc = ET.SubElement(
            suite,
            "testcase",
            classname=f"hil.nightly.{k['scenario']}",
            name=k["profile"],
            time=f"{secs:.3f}",
        )
        tp = ET.SubElement(tc, "properties")
        ET.SubElement(tp, "property", name="status", value=k["status"])
        ET.SubElement(tp, "property", name="flaky", value=str(k["flaky"]).lower())
        for name, st in k["metrics"].items():
            ET.SubElement(tp, "property", name=f"median.{name}", value=f"{st['median']:g}")
        regressed = [m["sentence"] for m in k["changes"] if m["verdict"] == "regression"]
        if k["outcome"] in ("fail", "timeout"):
            counts["failures"] += 1
            ET.SubElement(
                tc, "failure", message=f"{k['status']}: {k['reason']}", type=k["status"]
            ).text = "\n".join([k["reason"] or "", *regressed])
        elif k["status"] == INFRA:
            counts["errors"] += 1
            ET.SubElement(tc, "error", message=k["reason"] or "", type="infra").text = k["reason"]
        elif k["status"] == INTERRUPTED_:
            counts["skipped"] += 1
            ET.SubElement(tc, "skipped", message="interrupted")
        elif regressed:
            counts["failures"] += 1
            ET.SubElement(
                tc, "failure", message="; ".join(regressed), type="metric-regression"
            ).text = "\n".join(regressed)
        ET.SubElement(tc, "system-out").text = "\n".join(
            f"{r['outcome']:<8} {r['run_dir']}" for r in k["runs"]
        )
    for k, v in counts.items():
        suite.set(k, str(v))
    suite.set("time", f"{total:.3f}")
    ET.indent(suite)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


# -------------------------------------------------------------------- plots


def trend_data(history: History, s: dict, nights: int) -> dict:
    """What the plots show, read from the history: scenario -> {"profiles": [...],
    "measured": {metric: bool}, "points": {metric: {profile: [(started_at, median, min,
    max), ...]}}}.  Plain data, so another process can draw it."""
    out: dict = {}
    for k in s["keys"]:
        d = out.setdefault(k["scenario"], {"profiles": [], "measured": {}, "points": {}})
        if k["profile"] not in d["profiles"]:
            d["profiles"].append(k["profile"])
        for metric in TREND_METRICS:
            d["measured"][metric] = d["measured"].get(metric, False) or metric in k["metrics"]
    for scenario, d in out.items():
        for metric in TREND_METRICS:
            d["points"][metric] = {
                p: history.trend(scenario, p, metric, nights=nights) for p in d["profiles"]
            }
    return dict(sorted(out.items()))


def render_plots(data: dict) -> dict[str, str]:
    """trend_data -> scenario -> PNG data URI: boot time and CPU idle per night, a line per
    profile, the repeats' range as error bars."""
    # The object API, not pyplot: no global figure state, and half the import time.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = {}
    for scenario, d in data.items():
        fig = Figure(figsize=(10, 3.2), dpi=90)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(TREND_METRICS))
        fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.25, wspace=0.2)
        for ax, metric in zip(axes, TREND_METRICS, strict=True):
            rule = RULES[metric]
            for profile in d["profiles"]:
                pts = d["points"][metric][profile]
                if not pts:
                    continue
                xs = [p[0][:10] + ("\n" + p[0][11:16] if _same_day(pts) else "") for p in pts]
                scale = 100.0 if metric == "cpu_idle" else 1.0
                med = [p[1] * scale for p in pts]
                lo = [(p[1] - p[2]) * scale for p in pts]
                hi = [(p[3] - p[1]) * scale for p in pts]
                ax.errorbar(
                    range(len(xs)), med, yerr=[lo, hi], marker="o", capsize=3, label=profile
                )
                ax.set_xticks(range(len(xs)), xs, rotation=30, fontsize=7, ha="right")
            unit = "%" if metric == "cpu_idle" else rule.unit
            ax.set_title(f"{rule.label} ({metric}, {unit}), {rule.better} is better", fontsize=9)
            ax.grid(True, alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
            else:
                ax.text(
                    0.5,
                    0.5,
                    "no passing nights yet"
                    if d["measured"][metric]
                    else f"{metric} is not measured by this scenario",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
                ax.set_xticks([])
                ax.set_yticks([])
        buf = io.BytesIO()
        fig.savefig(buf, format="png", pil_kwargs={"compress_level": 3})
        out[scenario] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return out


class PlotWorker:
    """Draws the plots in a process of its own that starts with the nightly, at the lowest
    CPU priority (nice 19), and loads matplotlib while the runs go on: the import and the
    font set-up (a few hundred ms) then use CPU time the runs leave idle instead of adding
    to the nightly's wall time, and never compete with a run for a CPU.  A context manager:
    the process is gone after the ``with``.  If it is not there to answer, the plots are
    drawn here."""

    def __init__(self):
        self._conn = None
        self._proc = None

    def __enter__(self) -> PlotWorker:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_plot_worker, args=(child, os.getpid()), daemon=True)
        self._proc.start()
        child.close()
        return self

    def render(self, data: dict) -> dict[str, str]:
        try:
            self._conn.send(data)
            return self._conn.recv()
        except (EOFError, OSError):
            return render_plots(data)

    def __exit__(self, *exc) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.join(2)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()


def _plot_worker(conn, parent: int) -> None:
    import signal

    from .process import die_with_parent

    if not die_with_parent(signal.SIGKILL, parent):
        os._exit(0)
    # Ctrl-C is for the nightly: it still writes its report, with our help.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(19)
    render_plots({})  # the imports
    _warm_fonts()
    try:
        data = conn.recv()
    except (EOFError, OSError):
        os._exit(0)
    conn.send(render_plots(data))
    conn.close()
    os._exit(0)


def _warm_fonts() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=30)
    FigureCanvasAgg(fig)
    fig.subplots().set_title("x")
    fig.savefig(io.BytesIO(), format="png")


def _same_day(pts) -> bool:
    days = [p[0][:10] for p in pts]
    return len(set(days)) != len(days)


# --------------------------------------------------------------------- html

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1b1f24; max-width: 1200px }
h1 { font-size: 22px; margin: 0 0 4px } h2 { font-size: 17px; margin: 28px 0 8px }
.banner { padding: 10px 14px; border-radius: 6px; font-weight: 600; margin: 12px 0 }
.ok { background: #dff3e4; color: #14532d } .bad { background: #fde2e1; color: #7f1d1d }
.warn { background: #fff4d6; color: #713f12 }
table { border-collapse: collapse; width: 100%; margin: 6px 0 }
th, td { border-bottom: 1px solid #d8dee4; padding: 5px 8px; text-align: left;
         vertical-align: top }
th { background: #f3f5f7; font-weight: 600 }
.badge { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 12px;
         font-weight: 600; white-space: nowrap }
.s-pass { background: #1a7f37; color: #fff } .s-fixed { background: #0969da; color: #fff }
.s-new-failure { background: #cf222e; color: #fff } .s-still-failing { background: #fd8c73 }
.s-infra-error { background: #bf8700; color: #fff } .s-interrupted { background: #8c959f }
.s-flaky { background: #8250df; color: #fff } .worse { color: #cf222e; font-weight: 600 }
.better { color: #1a7f37 } code, .mono { font: 12px ui-monospace, monospace }
ul.changed li { font: 13px ui-monospace, monospace; margin: 2px 0 }
img { max-width: 100%; border: 1px solid #d8dee4; border-radius: 4px }
.muted { color: #57606a; font-size: 12px }
"""


def render_html(s: dict, plots: dict[str, str], nights: int) -> str:
    e = html.escape
    c = s["counts"]
    cls = "bad" if c["regressions"] else "warn" if (c[INFRA] or s["interrupted"]) else "ok"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pxOS nightly {e(s['date'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>pxOS nightly {e(s['date'])}</h1>",
        f'<div class="muted">batch <span class="mono">{e(s["batch_id"])}</span> &middot; '
        f'commit <span class="mono">{e((s["git"].get("commit") or "?")[:12])}</span>'
        f" &middot; host {e(str(s['host']))} &middot; {e(str(s['qemu_version']))} &middot; "
        f"{e(s['started_at'])} to {e(s['finished_at'])} (UTC) &middot; exit status "
        f"{s['exit_code']}</div>",
        f'<div class="banner {cls}">{e(headline(s))}</div>',
        "<h2>What changed since the baseline</h2>",
    ]
    if s["changed"]:
        out.append('<ul class="changed">' + "".join(f"<li>{e(x)}</li>" for x in s["changed"]))
        out.append("</ul>")
    else:
        out.append("<p>Nothing: every result and metric as before.</p>")
    out += [
        "<h2>Verdicts</h2>",
        "<table><tr><th>scenario</th><th>profile</th><th>status</th><th>runs</th>"
        "<th>boot time</th><th>CPU idle</th><th>baseline</th><th>serial logs</th></tr>",
    ]
    for k in s["keys"]:
        counted = [r for r in k["runs"] if r["counted"]]
        npass = sum(r["outcome"] == "pass" for r in counted)
        badges = f'<span class="badge s-{e(k["status"])}">{e(k["status"])}</span>'
        if k["flaky"]:
            badges += ' <span class="badge s-flaky">flaky</span>'
        base = e(k["baseline_batch"] or "none") + (" (pinned)" if k["baseline_pinned"] else "")
        logs = " ".join(
            f'<a href="{e(r["artifacts"].get("serial.log", r["run_dir"]))}">'
            f"#{r['repeat_index'] + 1}{'.' + str(r['attempt']) if r['attempt'] > 1 else ''}"
            f"</a>"
            for r in k["runs"]
        )
        reason = "" if k["outcome"] == "pass" else f'<div class="muted">{e(k["reason"])}</div>'
        out.append(
            f"<tr><td>{e(k['scenario'])}{reason}</td><td>{e(k['profile'])}</td>"
            f"<td>{badges}</td><td>{npass}/{len(counted)} pass</td>"
            f"<td>{_metric_html(k, 'boot_ms')}</td><td>{_metric_html(k, 'cpu_idle')}</td>"
            f'<td class="mono">{base}</td><td>{logs}</td></tr>'
        )
    out.append("</table>")
    out.append(f"<h2>Trends over the last {nights} nights</h2>")
    out.append(
        '<p class="muted">Median per night; bars span the repeats (min to max). Only passing '
        "runs are plotted.</p>"
    )
    for scenario, uri in plots.items():
        out.append(f"<h3>{e(scenario)}</h3>")
        out.append(f'<img alt="trends of {e(scenario)}" src="{uri}">')
    out += [
        "<h2>Runs and artifacts</h2>",
        "<table><tr><th>scenario</th><th>profile</th><th>run</th><th>outcome</th>"
        "<th>boot_ms</th><th>cpu_idle</th><th>artifacts</th></tr>",
    ]
    for k in s["keys"]:
        for r in k["runs"]:
            arts = " ".join(
                f'<a href="{e(href)}">{e(name)}</a>' for name, href in r["artifacts"].items()
            )
            note = " (retry)" if r["attempt"] > 1 else ""
            note += "" if r["counted"] else " (superseded)"
            m = r["metrics"]
            out.append(
                f"<tr><td>{e(k['scenario'])}</td><td>{e(k['profile'])}</td>"
                f'<td class="mono"><a href="{e(r["run_dir"])}">{e(r["run_id"])}</a>{note}</td>'
                f"<td>{e(r['outcome'])}</td>"
                f"<td>{_fmt('boot_ms', m['boot_ms']) if 'boot_ms' in m else '-'}</td>"
                f"<td>{_fmt('cpu_idle', m['cpu_idle']) if 'cpu_idle' in m else '-'}</td>"
                f'<td class="mono">{arts}</td></tr>'
            )
    out.append("</table>")
    out.append(
        '<p class="muted">Regression rules, statuses and exit codes: docs/nightly.md. '
        f'Command: <span class="mono">{e(" ".join(s["command"]))}</span></p>'
    )
    out.append("</body></html>\n")
    return "\n".join(out)


def _metric_html(k: dict, name: str) -> str:
    txt = html.escape(_metric_cell(k, name))
    ch = next((m for m in k["changes"] if m["metric"] == name), None)
    if ch and ch["verdict"] == "regression":
        return f'<span class="worse">{txt}</span>'
    if ch and ch["verdict"] == "improvement":
        return f'<span class="better">{txt}</span>'
    return txt


def load_summary(path: Path) -> dict:
    return json.loads(Path(path).read_text())
