"""The nightly report's files, each rendered from the summary dict: summary.json,
summary.md, junit.xml and report.html (with the trend plots)."""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from .. import results
from ..baseline import INFRA, INTERRUPTED_, STILL_FAILING
from ..history import History
from .plots import render_plots, trend_data
from .summary import headline


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
