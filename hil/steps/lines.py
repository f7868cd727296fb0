"""lines: wait for several lines, in order (default) or in any order.

- lines: ['first', {regex: 'second \\d'}]
  ordered: false
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pattern import Pattern
from .base import STEPS, Step, StepKind
from .patterns import parse_pattern


@dataclass(frozen=True)
class Lines(Step):
    patterns: tuple[Pattern, ...]
    ordered: bool = True
    kind = "lines"


@STEPS.register
class LinesKind(StepKind):
    name = "lines"
    keys = ("ordered",)

    def parse(self, f, common, ctx):
        items = f.get("lines", list, example="lines: ['first', 'second']")
        ordered = f.get("ordered", bool, True)
        if items is None:
            return None
        if not items:
            f.error("lines", "an empty list checks nothing; list the lines to wait for.")
            return None
        pats = [
            parse_pattern(ctx.problems, p, f"{f.path('lines')}[{j}]", items.lines[j])
            for j, p in enumerate(items)
        ]
        if None in pats:
            return None
        return Lines(**common, patterns=tuple(pats), ordered=ordered)

    def run(self, step, engine):
        left: list[Pattern] = list(step.patterns)

        def accept(ln) -> bool:
            candidates = left[:1] if step.ordered else left
            for pat in candidates:
                if pat.search(ln.text):
                    left.remove(pat)
                    return not left
            return False

        what = "these lines in order: " if step.ordered else "all of these lines: "
        engine.watch(step, accept, what + ", ".join(map(str, left)))
        return f"all {len(step.patterns)} lines seen"
