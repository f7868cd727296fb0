"""The run record: one typed object for everything a run leaves in run.json.

The runner fills a ``RunRecord`` as the run goes; ``to_json`` is the run.json layout
(docs/results.md) and ``from_json`` reads one back.  run.json is written from the record
only: once early (``partial``: a killed run still leaves one) and once at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .verdict import Verdict

SCHEMA = 1


@dataclass
class LimitResult:
    metric: str
    min: float | None
    max: float | None
    value: object
    ok: bool
    detail: str
    line: int | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("line")
        return d


@dataclass
class CheckResult:
    name: str
    outcome: str  # pass | fail | error
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class BatchInfo:
    """Where a run sits in the command that ran it (known before it starts)."""

    id: str
    kind: str
    repeat_index: int = 0
    repeat: int = 1
    attempt: int = 1
    retry_of: str | None = None
    flaky: bool = False  # passed only on a retry: set when the verdict is known

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RunRecord:
    scenario: str
    scenario_file: str
    run_id: str
    run_dir: Path
    started_at: str
    description: str = ""
    plan: dict = field(default_factory=dict)  # profile, accel, accel_reason, devices, gpu...
    git: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)
    image: dict | None = None
    qemu: dict = field(default_factory=dict)
    durations: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    limits: list[LimitResult] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    idle_windows: list[dict] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    sections: dict = field(default_factory=dict)  # device kinds' own keys ("gpu")
    artifacts: dict = field(default_factory=dict)
    verdict: Verdict | None = None
    batch: BatchInfo | None = None
    extra: dict = field(default_factory=dict)  # keys of a run.json this hil does not know

    @property
    def outcome(self) -> str:
        return self.verdict.outcome if self.verdict else "running"

    @property
    def data(self) -> dict:
        """run.json's content (what scripts and the history take)."""
        return self.to_json()

    def to_json(self) -> dict:
        d = {
            "schema": SCHEMA,
            "scenario": self.scenario,
            "scenario_file": self.scenario_file,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "description": self.description,
            **self.plan,
            "git": self.git,
            "host": self.host,
            "durations": self.durations,
            "metrics": self.metrics,
            "limits": [x.to_json() for x in self.limits],
            "steps": self.steps,
            "idle_windows": self.idle_windows,
            "qemu": self.qemu,
            "artifacts": self.artifacts,
            "checks": [c.to_json() for c in self.checks],
            **self.sections,
            **self.extra,
        }
        if self.image is not None:
            d["image"] = self.image
        if self.verdict is not None:
            d["verdict"] = self.verdict.to_json()
            d["exit_code"] = self.verdict.exit_code
        if self.batch is not None:
            d["batch"] = self.batch.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict, run_dir: Path | None = None) -> RunRecord:
        d = dict(d)
        plan_keys = ("profile", "accel", "accel_reason", "image_defines", "devices", "gpu")
        known = {
            "schema", "scenario", "scenario_file", "run_id", "started_at", "description",
            "git", "host", "durations", "metrics", "limits", "steps", "idle_windows", "qemu",
            "artifacts", "checks", "image", "verdict", "exit_code", "batch",
        }  # fmt: skip
        v = d.get("verdict")
        b = d.get("batch")
        return cls(
            scenario=d.get("scenario", ""),
            scenario_file=d.get("scenario_file", ""),
            run_id=d.get("run_id", ""),
            run_dir=Path(run_dir) if run_dir else Path(),
            started_at=d.get("started_at", ""),
            description=d.get("description", ""),
            plan={k: d[k] for k in plan_keys if k in d},
            git=d.get("git", {}),
            host=d.get("host", {}),
            image=d.get("image"),
            qemu=d.get("qemu", {}),
            durations=d.get("durations", {}),
            metrics=d.get("metrics", {}),
            limits=[LimitResult(**x) for x in d.get("limits", [])],
            steps=d.get("steps", []),
            idle_windows=d.get("idle_windows", []),
            checks=[CheckResult(**c) for c in d.get("checks", [])],
            artifacts=d.get("artifacts", {}),
            verdict=Verdict(**v) if v else None,
            batch=BatchInfo(**b) if b else None,
            extra={k: x for k, x in d.items() if k not in known and k not in plan_keys},
        )
