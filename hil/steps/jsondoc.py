"""json: wait for a JSON document the guest prints between two marker lines, and record
numbers from it as metrics (a benchmark tool's report, such as fio's).

    - json: {begin: '@fio qd1 begin', end: '@fio qd1 end'}
      record:
        fio.qd1.iops: [jobs, 0, read, iops]
        fio.qd1.clat_p50_ns: [jobs, 0, read, clat_ns, percentile, '50.000000']

Each ``record`` entry is a metric name and the path to a number in the document (keys and
list indices).  Console lines between the markers that are not part of the document (a
kernel message) make the JSON invalid: have the guest quiet its console first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..yamlsrc import excerpt
from .base import STEPS, Step, StepKind

METRIC = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*")
MAX_LINES = 100_000


@dataclass(frozen=True)
class Json(Step):
    begin: str
    end: str
    record: tuple[tuple[str, tuple], ...] = ()  # (metric, path)
    kind = "json"


@STEPS.register
class JsonKind(StepKind):
    name = "json"
    keys = ("record",)

    def parse(self, f, common, ctx):
        spec = f.get("json", dict, example="json: {begin: '@fio begin', end: '@fio end'}")
        record = f.get("record", dict, {}, example="record: {fio.iops: [jobs, 0, read, iops]}")
        if spec is None:
            return None
        begin, end = spec.get("begin"), spec.get("end")
        if not all(isinstance(x, str) and x for x in (begin, end)) or set(spec) != {"begin", "end"}:
            f.error("json", "give exactly {begin: 'marker line', end: 'marker line'}.")
            return None
        pairs = []
        for name, path in (record or {}).items():
            ok_path = (
                isinstance(path, list)
                and path
                and all(
                    isinstance(p, str) or (isinstance(p, int) and not isinstance(p, bool))
                    for p in path
                )
            )
            if not isinstance(name, str) or not METRIC.fullmatch(name):
                f.error("record", f"{excerpt(name)} is not a metric name (e.g. fio.qd1.iops).")
            elif not ok_path:
                f.error(
                    "record",
                    f"{name}: the path is a list of keys and indices, e.g. [jobs, 0, read, iops].",
                )
            else:
                pairs.append((name, tuple(path)))
        return Json(**common, begin=begin, end=end, record=tuple(pairs))

    def recorded(self, step):
        return {name for name, _ in step.record}

    def run(self, step, engine):
        started = engine.watch(step, lambda ln: ln.text.strip() == step.begin, repr(step.begin))
        body: list[str] = []

        def collect(ln) -> bool:
            if ln.text.strip() == step.end:
                return True
            if len(body) < MAX_LINES:
                body.append(ln.text)
            return False

        engine.watch(step, collect, f"{step.end!r} (the end of the JSON after {step.begin!r})")
        try:
            doc = json.loads("\n".join(body))
        except ValueError as e:
            engine.fail(
                step,
                f"the text between {step.begin!r} and {step.end!r} is not JSON: {e}",
                "json",
                step.begin,
            )
        for name, path in step.record:
            value = doc
            for key in path:
                try:
                    value = value[key]
                except (KeyError, IndexError, TypeError):
                    engine.fail(
                        step,
                        f"{name}: the document has no {list(path)!r} (no {key!r})",
                        "json",
                        step.begin,
                    )
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                engine.fail(
                    step,
                    f"{name}: {list(path)!r} is {excerpt(value)}, not a number",
                    "json",
                    step.begin,
                )
            engine.out.recorded[name] = value
        return (
            f"{len(body)} lines of JSON from {started.t * 1000:.1f} ms, {len(step.record)} values"
        )
