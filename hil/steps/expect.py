"""expect: wait for one console line matching a pattern; optionally record groups of it.

- expect: '@stage ready'
- expect: {regex: 'busy=(?P<busy>[0-9a-f]+)'}
  record: {busy: hex}
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pattern import Pattern
from ..yamlsrc import excerpt, suggest
from .base import STEPS, Step, StepKind
from .patterns import parse_pattern

RECORD_TYPES = {
    "int": lambda s: int(s, 10),
    "hex": lambda s: int(s, 16),
    "float": float,
    "str": str,
}


@dataclass(frozen=True)
class Expect(Step):
    pattern: Pattern
    record: tuple[tuple[str, str], ...] = ()  # (regex group, type)
    kind = "expect"


@STEPS.register
class ExpectKind(StepKind):
    name = "expect"
    keys = ("record",)

    def parse(self, f, common, ctx):
        pat = parse_pattern(ctx.problems, f.raw("expect"), f.path("expect"), f.line_of("expect"))
        record = f.get("record", dict, {}, example="record: {busy: hex}")
        pairs = []
        for group, typ in (record or {}).items():
            if not isinstance(typ, str) or typ not in RECORD_TYPES:
                f.error(
                    "record",
                    f"type {excerpt(typ)} for {excerpt(group)} is not one of "
                    f"{', '.join(RECORD_TYPES)}{suggest(str(typ), RECORD_TYPES)}.",
                )
                continue
            if pat is None:
                continue
            if not pat.regex or group not in pat.compiled.groupindex:
                f.error(
                    "record",
                    f"{str(group)[:40]!r} is not a named group of the pattern; write the "
                    f"pattern as {{regex: '...(?P<{group}>...)...'}}.",
                )
                continue
            pairs.append((group, typ))
        return Expect(**common, pattern=pat, record=tuple(pairs)) if pat else None

    def recorded(self, step):
        return {name for name, _ in step.record}

    def run(self, step, engine):
        line = engine.watch(
            step, lambda ln: bool(step.pattern.search(ln.text)), f"a line matching {step.pattern}"
        )
        if step.record:
            m = step.pattern.search(line.text)
            for group, typ in step.record:
                raw = m.group(group)
                try:
                    engine.out.recorded[group] = RECORD_TYPES[typ](raw)
                except (TypeError, ValueError):
                    engine.fail(
                        step,
                        f"recorded value {group}={raw!r} is not of type {typ}",
                        "record",
                        str(step.pattern),
                    )
        return f"matched at {line.t * 1000:.1f} ms: {line.text}"
