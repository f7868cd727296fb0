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
       floor     = max(rel x |baseline median|, abs)
       tolerance = max(floor, k x noise)
       p         = one-sided exact rank test (Mann-Whitney) of the repeats
       regression  if worse >  tolerance, or worse > floor and p <= 0.05
       improvement likewise with the sign turned

   So a change has to exceed the rule's fixed floor *and* k times the spread the repeats
   (and the recent nights) showed before it is reported.  Every change also carries a
   one-sided rank test (Mann-Whitney, exact) of the baseline repeats against the current
   ones: its p-value says how sure so few repeats can be.
3. *Does a suspected regression hold up?*  ``hil nightly`` re-runs each suspect a few
   more times, interleaved with a pair that did not move (hil.nightly, ``confirm``): the
   change is *confirmed* when the new repeats regress too (same rule, and a rank test of
   tonight's repeats and the re-runs, pooled, against the baseline at p <= 0.01) --
   after dividing out how much slower the control
   pair (the one that moved least) got meanwhile, and then by more than the rule's whole
   tolerance (the factor is an estimate; the rank test alone does not confirm); *host noise* when the new repeats do
   not regress; *host slowed down* when they regress only as much as the control did.
   Only a confirmed change is a regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .history import History, RunRow
from .stats import Stats, rank_p
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
        # The pixel NVMe driver's random reads (hil/nvmeperf.py): fewer IOPS or MB/s, or
        # a longer round, is worse.  Lavapipe on a shared host is noisy: wide floors.
        *(
            r
            for qd in (1, 16)
            for r in (
                MetricRule(
                    f"nvme.qd{qd}.iops",
                    "higher",
                    rel=0.25,
                    abs=0.0,
                    k=3.0,
                    unit="/s",
                    label=f"NVMe 4 KiB random read IOPS, QD{qd}",
                ),
                MetricRule(
                    f"nvme.qd{qd}.mbps",
                    "higher",
                    rel=0.25,
                    abs=0.0,
                    k=3.0,
                    unit="MB/s",
                    label=f"NVMe 4 KiB random read MB/s, QD{qd}",
                ),
                MetricRule(
                    f"nvme.qd{qd}.lat_p50_ms",
                    "lower",
                    rel=0.25,
                    abs=0.5,
                    k=3.0,
                    unit="ms",
                    label=f"NVMe read latency (median), QD{qd}",
                ),
                MetricRule(
                    f"nvme.qd{qd}.lat_p99_ms",
                    "lower",
                    rel=0.50,
                    abs=2.0,
                    k=3.0,
                    unit="ms",
                    label=f"NVMe read latency (p99), QD{qd}",
                ),
            )
        ),
        # The pixel e1000 driver's UDP echo (hil/netmetrics.py) and the xHCI driver's
        # keyboard echo and stick reads (scenarios/usb.yaml): same wide floors.
        MetricRule(
            "net.packets_per_s",
            "higher",
            rel=0.25,
            abs=0.0,
            k=3.0,
            unit="/s",
            label="UDP echo packets per second",
        ),
        MetricRule(
            "net.round_ms.p50",
            "lower",
            rel=0.25,
            abs=2.0,
            k=3.0,
            unit="ms",
            label="UDP echo round (median)",
        ),
        # ICMP echo through the raw network (hil/rawpeer.py times it on the host): a
        # handful of pings per run, so a wider floor.
        MetricRule(
            "net.ping.rtt_ms.p50",
            "lower",
            rel=0.50,
            abs=5.0,
            k=3.0,
            unit="ms",
            label="ICMP echo round trip (median, host)",
        ),
        MetricRule(
            "key_echo.p50_ms",
            "lower",
            rel=0.50,
            abs=2.0,
            k=3.0,
            unit="ms",
            label="key press to echo (median)",
        ),
        MetricRule(
            "usb.read_mbps",
            "higher",
            rel=0.25,
            abs=0.0,
            k=3.0,
            unit="MB/s",
            label="USB stick read MB/s",
        ),
    )
}


CONFIRMED, HOST_NOISE, HOST_SLOWED = "confirmed", "host-noise", "host-slowed"
# The rank test's bar for a confirmation: tonight's repeats and the re-runs, pooled,
# against the baseline's (3 + 5 against 3 can reach p = 1/165).
CONFIRM_P = 0.01
RANK_P = 0.05  # ... and for a change beyond the floor but within k sigma of few repeats


@dataclass(frozen=True)
class Confirmation:
    """What re-running a suspected regression showed (hil.nightly.confirm)."""

    status: str  # confirmed | host-noise | host-slowed
    again: MetricChange | None  # the metric on the re-runs against the same baseline
    p: float | None  # rank test: baseline repeats vs the re-runs
    control: str | None = None  # "scenario [profile]" re-run beside it
    control_change: MetricChange | None = None
    why: str = ""  # when no re-run could say more (e.g. every pair moved)

    def sentence(self) -> str:
        head = {
            CONFIRMED: "confirmed",
            HOST_NOISE: "not confirmed (host noise)",
            HOST_SLOWED: "host slowed down (the control moved as much)",
        }[self.status]
        parts = [head]
        if self.again is not None:
            a = self.again
            u = f" {a.rule.unit}" if a.rule.unit else ""
            parts.append(f"re-runs: {a.current.format(u)}, rank test p={self.p:.3g}")
        if self.control:
            c = self.control_change
            moved = (
                "did not run"
                if c is None
                else f"moved too: {c.baseline.median:g} -> {c.current.median:g}"
                if c.verdict == "regression"
                else f"unchanged ({c.baseline.median:g} -> {c.current.median:g})"
            )
            parts.append(f"control {self.control} {moved}")
        if self.why:
            parts.append(self.why)
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "p": self.p,
            "again": self.again.to_json() if self.again else None,
            "control": self.control,
            "control_change": self.control_change.to_json() if self.control_change else None,
            "why": self.why,
            "sentence": self.sentence(),
        }


@dataclass(frozen=True)
class MetricChange:
    metric: str
    baseline: Stats
    current: Stats
    worse_by: float  # > 0: worse than the baseline, in the metric's unit
    tolerance: float
    verdict: str  # regression | improvement | same
    p: float | None = None  # one-sided rank test that now is worse than the baseline
    baseline_values: tuple[float, ...] = ()
    current_values: tuple[float, ...] = ()
    confirmation: Confirmation | None = None

    @property
    def rule(self) -> MetricRule:
        return RULES[self.metric]

    @property
    def counts(self) -> bool:
        """A regression that stands: not yet re-run, or confirmed."""
        return self.verdict == "regression" and (
            self.confirmation is None or self.confirmation.status == CONFIRMED
        )

    def confidence(self) -> str:
        if self.p is None:
            return ""
        b, c = self.baseline.n, self.current.n
        return f"rank test p={self.p:.3g} ({b} vs {c} repeats)"

    def sentence(self) -> str:
        r = self.rule
        u = f" {r.unit}" if r.unit else ""
        b, c = self.baseline, self.current
        pct = f" ({(c.median - b.median) / b.median * 100:+.1f} %)" if b.median else ""
        what = {"regression": "worse", "improvement": "better", "same": "within noise"}[
            self.verdict
        ]
        out = (
            f"{r.label} ({self.metric}) {what}: {b.median:g}{u} -> {c.median:g}{u}{pct}, "
            f"tolerance {self.tolerance:.3g}{u} (baseline n={b.n}, now n={c.n})"
        )
        if self.verdict != "same" and self.p is not None:
            out += f"; {self.confidence()}"
        if self.confirmation is not None:
            out += f"; {self.confirmation.sentence()}"
        return out

    def to_json(self) -> dict:
        return {
            "metric": self.metric,
            "verdict": self.verdict,
            "counts": self.counts,
            "p": self.p,
            "confirmation": self.confirmation.to_json() if self.confirmation else None,
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
    rule: MetricRule,
    baseline: Stats,
    current: Stats,
    history: Stats | None = None,
    values: tuple[list[float], list[float]] | None = None,
) -> MetricChange:
    """``history``: the medians of recent passing nights (their spread is noise too);
    ``values``: the raw (baseline, current) samples, for the rank test."""
    diff = current.median - baseline.median
    worse = diff if rule.better == "lower" else -diff
    noise = max(baseline.sigma, current.sigma)
    if history is not None and history.n >= HISTORY_MIN:
        noise = max(noise, history.sigma)
    floor = max(rule.rel * abs(baseline.median), rule.abs)
    tol = max(floor, rule.k * noise)
    p, base_values, cur_values = None, (), ()
    if values is not None:
        b, c = values
        better = rule.better if worse >= 0 else _other(rule.better)
        p, base_values, cur_values = rank_p(b, c, better), tuple(b), tuple(c)
    # Beyond the floor, a change counts when it clears k sigma of the noise -- or, since a
    # spread from three repeats is a weak estimate, when the rank test says the repeats
    # do not overlap (p <= RANK_P); a suspect is then re-run before it is reported.
    clear = abs(worse) > tol or (p is not None and p <= RANK_P and abs(worse) > floor)
    verdict = "same" if not clear else "regression" if worse > 0 else "improvement"
    return MetricChange(
        rule.metric, baseline, current, worse, tol, verdict, p, base_values, cur_values
    )


def _other(better: str) -> str:
    return "higher" if better == "lower" else "lower"


def compare_metrics(
    baseline: list[dict[str, float]],
    current: list[dict[str, float]],
    nightly_medians: dict[str, list[float]] | None = None,
) -> list[MetricChange]:
    """Metric samples (one dict per passing run) -> a change per ruled metric in both.
    ``nightly_medians``: metric -> medians of recent passing nights (oldest first)."""
    out = []
    for name, rule in RULES.items():
        bv = [m[name] for m in baseline if name in m]
        cv = [m[name] for m in current if name in m]
        b, c = Stats.of(bv), Stats.of(cv)
        h = Stats.of((nightly_medians or {}).get(name, []))
        if b is not None and c is not None:
            out.append(compare_metric(rule, b, c, h, (bv, cv)))
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
    load: dict = field(default_factory=dict)  # host load: baseline/now medians, steal_pct

    @property
    def metric_regressions(self) -> list[MetricChange]:
        """Regressions that stand (not refuted by re-running them)."""
        return [c for c in self.changes if c.counts]

    @property
    def suspects(self) -> list[MetricChange]:
        """Metrics that look worse and have not been re-run yet."""
        return [c for c in self.changes if c.verdict == "regression" and c.confirmation is None]

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
                cmp.load = _load(base_runs, passing)
            else:
                cmp.note = f"the pinned baseline {base} has no passing run of this key"
        elif outcome == PASS:
            cmp.note = "no baseline yet (first passing nightly of this key)"
        out.append(cmp)
    return out


def _load(base_runs: list[dict], now: list[dict]) -> dict:
    """Median host load at the start of the baseline's and this batch's runs."""
    out = {}
    for name, runs in (("baseline", base_runs), ("now", now)):
        st = Stats.of([m["host.load1_start"] for m in runs if "host.load1_start" in m])
        if st is not None:
            out[name] = round(st.median, 2)
    steal = Stats.of([m["host.steal_pct"] for m in now if "host.steal_pct" in m])
    if steal is not None:
        out["steal_pct"] = round(steal.median, 2)
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
