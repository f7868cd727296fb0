"""Every hil module imports on its own, first, in a fresh interpreter.

Regression: `import hil.scenario` as the first import failed with a circular import
(hil.checks -> hil.devices -> hil.steps -> hil.checks), while the CLI's import order
hid it; tools/gpu-bundle and benchmarks import modules in their own order.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import hil
from hil.paths import REPO


def _modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(hil.__path__, "hil.")
        if m.name != "hil.__main__"  # runs the CLI
    )


def test_each_module_imports_first():
    # One interpreter per module, in batches run side by side: the order matters, the
    # process count does not.
    mods = _modules()
    assert len(mods) > 40
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", f"import {m}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for m in mods
    }
    failed = {}
    for m, p in procs.items():
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            failed[m] = out.strip().splitlines()[-1:]
    assert not failed, failed
