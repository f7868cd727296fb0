"""The `hil` command line (placeholder until the run pipeline lands)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["test"]:
        import pytest

        return pytest.main([str(REPO / "tests"), *argv[1:]])
    print("usage: hil test", file=sys.stderr)
    return 2
