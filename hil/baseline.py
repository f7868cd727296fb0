"""The nightly verdict: each (scenario, profile) of a batch against its previous run and
its baseline.

Two questions per key (docs/nightly.md, "Regression rules", is the user-facing text):

1. *Did its outcome change?*  Against the **previous** decisive run of the key (the newest
   earlier batch of the same kind with a pass/fail/timeout run of it; infrastructure
   errors say nothing about the system under test and are skipped):
   pass->fail is a ``new-failure`` (a regression), fail->pass is ``fixed``, fail->fail is
   ``still-failing``.  A key with no decisive run before fails as a ``new-failure`` too.
2. *Did its metrics get worse?*  Only when it passed now, against its **baseline**: the
   pinned batch for the key if there is one, else the newest earlier batch (same kind) in
   which every counted run of the key passed.  Per metric with a rule in ``RULES``:

       worse  = how much the current median is worse than the baseline median
                (current - baseline when lower is better, baseline - current otherwise)
       noise  = max(sigma(baseline repeats), sigma(current repeats),
                    sigma(the nightly medians of the last 7 passing nights, when >= 3)),
                sigma = 1.4826 x median absolute deviation (hil.stats)
       tolerance = max(rel x |baseline median|, abs, k x noise)
       regression  if worse >  tolerance
       improvement if worse < -tolerance

   So a change has to exceed the rule's fixed floor *and* k times the spread the repeats
   (and the recent nights) showed before it is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .history import History, RunRow
from .stats import Stats
from .verdict import ERROR, FAIL, INTERRUPTED, PASS, TIMEOUT, is_flaky, worst

NEW_FAILURE, STILL_FAILING, FIXED, PASSING, INFRA, INTERRUPTED_ = (
    "new-failure",
    "still-failing",
    "fixed",
    "pass",
    "infra-error",
    "interrupted",
)
FAILED = (FAIL, TIMEOUT)


@dataclass(frozen=True)
class MetricRule:
    metric: str
    better: str  # "lower" | "higher"
    rel: float  # tolerance as a fraction of the baseline median
    abs: float  # tolerance in the metric's unit
    k: float  # tolerance in units of the repeats' spread (sigma)
    unit: str
    label: str

    def describe(self) -> str:
        parts = []
        if self.rel:
            parts.append(f"{self.rel * 100:g} % of the baseline")
        parts.append(f"{self.abs:g}{(' ' + self.unit) if self.unit else ''}")
        parts.append(f"{self.k:g} sigma")
        return f"{self.better} is better; tolerance = max({', '.join(parts)})"


# The metrics the nightly verdict watches; a new metric gets a rule here (and docs/nightly.md
# its row, which tests/test_nightly_docs.py keeps equal).
RULES: dict[str, MetricRule] = {
    r.metric: r
    for r in (
        MetricRule("boot_ms", "lower", rel=0.10, abs=5.0, k=3.0, unit="ms", label="boot time"),
        MetricRule("cpu_idle", "higher", rel=0.0, abs=0.005, k=3.0, unit="", label="CPU idle"),
        MetricRule(
            "wakeups_per_s", "lower", rel=0.50, abs=5.0, k=3.0, unit="/s", label="idle wake-ups"
        ),
        # The virtual GPU (docs/vgpu.md): executor throughput and mailbox latency.
        MetricRule(
            "gpu.instructions_per_s",
            "higher",
            rel=0.25,
            abs=0.0,
            k=3.0,
            unit="/s",
            label="GPU instructions per second",
        ),
        MetricRule(
            "gpu.dispatch_ms.p50",
            "lower",
            rel=0.25,
            abs=0.5,
            k=3.0,
            unit="ms",
            label="GPU dispatch time (median)",
        ),
        MetricRule(
            "gpu.roundtrip_us.p50",
            "lower",
            rel=0.25,
            abs=20.0,
            k=3.0,
            unit="µs",
            label="mailbox round trip (median)",
        ),
    )
}


@dataclass(frozen=True)
class MetricChange:
    metric: str
    baseline: Stats
    current: Stats
    worse_by: float  # > 0: worse than the baseline, in the metric's unit
    tolerance: float
    verdict: str  # regression | improvement | same

    @property
    def rule(self) -> MetricRule:
        return RULES[self.metric]

    def sentence(self) -> str:
        r = self.rule
        u = f" {r.unit}" if r.unit else ""
        b, c = self.baseline, self.current
        pct = f" ({(c.median - b.median) / b.median * 100:+.1f} %)" if b.median else ""
        what = {"regression": "worse", "improvement": "better", "same": "within noise"}[
            self.verdict
        ]
        return (
            f"{r.label} ({self.metric}) {what}: {b.median:g}{u} -> {c.median:g}{u}{pct}, "
            f"tolerance {self.tolerance:.3g}{u} (baseline n={b.n}, now n={c.n})"
        )

    def to_json(self) -> dict:
        return {
            "metric": self.metric,
            "verdict": self.verdict,
            "baseline": self.baseline.to_json(),
            "current": self.current.to_json(),
            "worse_by": self.worse_by,
            "tolerance": self.tolerance,
            "rule": {
                "better": self.rule.better,
                "rel": self.rule.rel,
                "abs": self.rule.abs,
                "k": self.rule.k,
            },
            "sentence": self.sentence(),
        }


HISTORY_NIGHTS = 7  # nights whose medians estimate night-to-night noise
HISTORY_MIN = 3  # ... when at least this many passed


def compare_metric(
    rule: MetricRule, baseline: Stats, current: Stats, history: Stats | None = None
) -> MetricChange:
    """``history``: the medians of recent passing nights (their spread is noise too)."""
    diff = current.median - baseline.median
    worse = diff if rule.better == "lower" else -diff
    noise = max(baseline.sigma, current.sigma)
    if history is not None and history.n >= HISTORY_MIN:
        noise = max(noise, history.sigma)
    tol = max(rule.rel * abs(baseline.median), rule.abs, rule.k * noise)
    verdict = "regression" if worse > tol else "improvement" if worse < -tol else "same"
    return MetricChange(rule.metric, baseline, current, worse, tol, verdict)


def compare_metrics(
    baseline: list[dict[str, float]],
    current: list[dict[str, float]],
    nightly_medians: dict[str, list[float]] | None = None,
) -> list[MetricChange]:
    """Metric samples (one dict per passing run) -> a change per ruled metric in both.
    ``nightly_medians``: metric -> medians of recent passing nights (oldest first)."""
    out = []
    for name, rule in RULES.items():
        b = Stats.of([m[name] for m in baseline if name in m])
        c = Stats.of([m[name] for m in current if name in m])
        h = Stats.of((nightly_medians or {}).get(name, []))
        if b is not None and c is not None:
            out.append(compare_metric(rule, b, c, h))
    return out


def classify(current: str, previous: str | None) -> str:
    """Outcome now and of the previous decisive run (None: none) -> a status."""
    if current == INTERRUPTED:
        return INTERRUPTED_
    if current == ERROR:
        return INFRA
    if current in FAILED:
        return STILL_FAILING if previous in FAILED else NEW_FAILURE
    return FIXED if previous in FAILED else PASSING


@dataclass
class KeyComparison:
    scenario: str
    profile: str
    status: str
    outcome: str
    previous_outcome: str | None
    previous_batch: str | None
    baseline_batch: str | None
    baseline_pinned: bool
    flaky: bool
    runs: list[RunRow]  # the counted runs of this batch
    attempts: list[RunRow]  # every attempt, retries included
    stats: dict[str, Stats]
    changes: list[MetricChange] = field(default_factory=list)
    note: str = ""

    @property
    def metric_regressions(self) -> list[MetricChange]:
        return [c for c in self.changes if c.verdict == "regression"]

    @property
    def regression(self) -> bool:
        return self.status == NEW_FAILURE or bool(self.metric_regressions)

    @property
    def reason(self) -> str:
        bad = [r for r in self.runs if r.outcome != PASS]
        return (bad[0].reason or "") if bad else (self.runs[0].reason if self.runs else "")


def compare_batch(history: History, batch_id: str) -> list[KeyComparison]:
    """Every (scenario, profile) of ``batch_id`` against its previous run and baseline."""
    batch = history.batch(batch_id)
    kind = batch.kind if batch else None
    attempts = history.batch_runs(batch_id)
    keys = sorted({(r.scenario, r.profile) for r in attempts})
    out = []
    for scenario, profile in keys:
        runs = history.final_runs(scenario, profile, batch_id)
        every = [r for r in attempts if (r.scenario, r.profile) == (scenario, profile)]
        outcome = worst([r.outcome for r in runs])
        prev_batch = history.previous_batch_with(scenario, profile, batch_id, kind=kind)
        prev = None
        if prev_batch:
            decisive = [
                r.outcome
                for r in history.final_runs(scenario, profile, prev_batch)
                if r.outcome in (PASS, *FAILED)
            ]
            prev = worst(decisive) if decisive else None
        status = classify(outcome, prev)
        pinned = history.pinned(scenario, profile)
        base = pinned or history.previous_batch_with(
            scenario, profile, batch_id, passed=True, kind=kind
        )
        passing = [r.metrics for r in runs if r.outcome == PASS]
        flaky = is_flaky([(r.outcome, bool(r.flaky)) for r in runs])
        cmp = KeyComparison(
            scenario,
            profile,
            status,
            outcome,
            prev,
            prev_batch,
            base,
            bool(pinned),
            flaky,
            runs,
            every,
            {
                k: s
                for k, s in (
                    (k, Stats.of([m[k] for m in passing if k in m]))
                    for k in sorted({k for m in passing for k in m})
                )
                if s is not None
            },
        )
        if outcome == PASS and base:
            base_runs = [
                r.metrics for r in history.final_runs(scenario, profile, base) if r.outcome == PASS
            ]
            if base_runs:
                before = batch.started_at if batch else None
                recent = {
                    name: [
                        p[1]
                        for p in history.trend(
                            scenario, profile, name, kind or "nightly", HISTORY_NIGHTS, before
                        )
                    ]
                    for name in RULES
                }
                cmp.changes = compare_metrics(base_runs, passing, recent)
            else:
                cmp.note = f"the pinned baseline {base} has no passing run of this key"
        elif outcome == PASS:
            cmp.note = "no baseline yet (first passing nightly of this key)"
        out.append(cmp)
    return out


def exit_status(comparisons: list[KeyComparison], interrupted: bool = False) -> int:
    """0 nothing regressed; 1 a regression (new failure or metric regression); 3 an
    infrastructure error and no regression; 130 interrupted (docs/exit-codes.md)."""
    if interrupted or any(c.status == INTERRUPTED_ for c in comparisons):
        return 130
    if any(c.regression for c in comparisons):
        return 1
    if any(c.status == INFRA for c in comparisons):
        return 3
    return 0


def doc_table() -> str:
    """The metric rules as a Markdown table (docs/nightly.md embeds it; a test checks)."""
    rows = [
        "| metric | what | better | relative floor | absolute floor | noise factor k |",
        "|---|---|---|---|---|---|",
    ]
    for r in RULES.values():
        rows.append(
            f"| `{r.metric}` | {r.label} | {r.better} | {r.rel * 100:g} % | "
            f"{r.abs:g}{(' ' + r.unit) if r.unit else ''} | {r.k:g} |"
        )
    return "\n".join(rows)
