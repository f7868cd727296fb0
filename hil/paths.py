"""Where things are: the repository, its shipped directories and hil's caches -- said once.

Every other module imports these names instead of working them out from ``__file__``.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"
PROFILES = REPO / "qemu_configs"
TESTS = REPO / "tests"
RESULTS = REPO / "results"  # the default results root
CACHE = Path.home() / ".cache" / "pxos-hil"  # built images (images/), tool probes


def rel(p: Path | str, start: Path | None = None) -> str:
    """``p`` relative to ``start`` (default: the working directory) when it lies below it,
    else as given: paths printed for a person stay short."""
    base = Path.cwd() if start is None else Path(start)
    try:
        return str(Path(p).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)
