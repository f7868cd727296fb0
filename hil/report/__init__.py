"""Nightly reports: results/nightly/<date>/{summary.json, summary.md, report.html, junit.xml}.

summary.py builds the data (one plain dict), writers.py renders every file from it,
plots.py draws the trend plots in a process of its own.  Layout and keys: docs/nightly.md.
"""

from __future__ import annotations

from .plots import PlotWorker, render_plots, trend_data
from .summary import SCHEMA, build_summary, changed_lines, headline, load_summary
from .writers import render_html, render_markdown, write_all, write_junit

__all__ = [
    "SCHEMA",
    "PlotWorker",
    "build_summary",
    "changed_lines",
    "headline",
    "load_summary",
    "render_html",
    "render_markdown",
    "render_plots",
    "trend_data",
    "write_all",
    "write_junit",
]
