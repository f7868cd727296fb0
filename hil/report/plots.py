"""Trend plots of the nightly report, drawn by a low-priority process of their own
(``PlotWorker``) that loads matplotlib while the runs go on."""

from __future__ import annotations

import base64
import io
import os

from ..baseline import RULES
from ..history import History
from .summary import TREND_METRICS


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

    from ..process import die_with_parent

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
