"""pytest plugin: every scenario file (x profile) is a test item.

    pytest scenarios/                                   # each scenario on its own profile
    pytest scenarios/ --hil-profile q35-tcg-bios --hil-profile q35-tcg-pvh -n 2
    pytest scenarios/boot.yaml --junitxml=out.xml        # any CI that reads pytest output

Installed with hil (entry point ``pytest11``); elsewhere ``-p hil.pytest_plugin``.  A YAML
file is collected when it is a mapping with a ``steps`` list (profiles and other YAML are
left alone).  Each item runs ``hil.runner.run_scenario`` in the pytest process (with
pytest-xdist, in its worker process), writes the usual results directory, records the
run in the history database (batch kind ``pytest``) and puts outcome, run directory and
metrics in the item's ``user_properties`` (JUnit ``<property>``).  A failed run fails
the item with the same verdict text `hil run` prints; an invalid scenario fails it with
the file:line problems.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import yaml

from . import results

BATCH_ENV = "PXOS_HIL_PYTEST_BATCH"  # one batch id shared by xdist workers


def pytest_addoption(parser):
    g = parser.getgroup("hil", "pxOS hardware-in-the-loop scenarios (hil.pytest_plugin)")
    g.addoption(
        "--hil-profile",
        action="append",
        default=[],
        metavar="PROFILE",
        help="run every collected scenario on this profile (repeatable: a matrix); "
        "default: each scenario's own profile",
    )
    g.addoption(
        "--hil-results",
        default=None,
        metavar="DIR",
        help="results root (default: results/ in the hil repository)",
    )
    g.addoption(
        "--hil-no-history",
        action="store_true",
        help="do not record runs in the history database",
    )


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix in (".yaml", ".yml") and _is_scenario(file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def _is_scenario(path: Path) -> bool:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("steps"), list)


class ScenarioFile(pytest.File):
    def collect(self):
        from .errors import UserError
        from .plan import make_plan
        from .scenario import load_scenario
        from .yamlsrc import ValidationError

        profiles = self.config.getoption("hil_profile") or [None]
        for profile in profiles:
            name = f"{self.path.stem}[{profile}]" if profile else self.path.stem
            try:
                plan = make_plan(load_scenario(self.path, profile))
            except ValidationError as e:
                yield ScenarioItem.from_parent(self, name=name, plan=None, problems=e.problems)
                continue
            except UserError as e:
                yield ScenarioItem.from_parent(self, name=name, plan=None, problems=[str(e)])
                continue
            yield ScenarioItem.from_parent(
                self, name=f"{plan.name}[{plan.profile.name}]", plan=plan, problems=[]
            )


class ScenarioFailed(Exception):
    """The run did not pass; carries the verdict text."""


class ScenarioInvalid(Exception):
    """The scenario file has problems; nothing ran."""


class ScenarioItem(pytest.Item):
    def __init__(self, *, plan, problems, **kw):
        super().__init__(**kw)
        self.plan = plan
        self.problems = problems

    def runtest(self):
        from .history import History
        from .progress import Progress
        from .runner import RunOptions, run_scenario

        if self.problems:
            raise ScenarioInvalid("\n\n".join(self.problems))
        root = Path(self.config.getoption("hil_results") or results.DEFAULT_ROOT).resolve()
        text = io.StringIO()
        rec = run_scenario(self.plan, RunOptions(results_root=root), Progress("quiet", text))
        v = rec.verdict
        self.user_properties += [
            ("outcome", v.outcome),
            ("profile", self.plan.profile.name),
            ("run_dir", str(rec.run_dir)),
            *[(f"metric.{k}", val) for k, val in rec.metrics.items()],
        ]
        if not self.config.getoption("hil_no_history"):
            batch = _batch_id()
            with History.at(root) as h:
                h.add_batch(batch, "pytest", rec.started_at)
                h.record(rec.to_json(), rec.run_dir, batch_id=batch)
        if v.outcome == "interrupted":
            raise KeyboardInterrupt
        if v.outcome != "pass":
            raise ScenarioFailed(text.getvalue().rstrip())

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, (ScenarioFailed, ScenarioInvalid)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        prof = self.plan.profile.name if self.plan else "?"
        return self.path, 0, f"scenario {self.name} (profile {prof})"


def _batch_id() -> str:
    from .batch import new_batch_id

    if not os.environ.get(BATCH_ENV):
        os.environ[BATCH_ENV] = new_batch_id("pytest")
    return os.environ[BATCH_ENV]


def pytest_configure(config):
    # Under pytest-xdist the controller configures before it starts its workers, which
    # inherit its environment: so one pytest session is one batch in the history.
    if not hasattr(config, "workerinput"):
        _batch_id()
