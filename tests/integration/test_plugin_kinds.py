"""Adding a kind is one file: a device kind, a step kind and a check kind defined here,
registered from the test, run through `hil run` on a real scenario under TCG."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from hil import qemuopt
from hil.checks import CHECKS, CheckKind
from hil.cli import main
from hil.devices import DEVICES, DeviceKind, Finding, PciId
from hil.steps import STEPS, Step, StepKind

TESTDEV = PciId(0x1B36, 0x0005, 0x00FF00)  # QEMU's pci-testdev (class 00ff)


@dataclass(frozen=True)
class PciTestDev:
    count: int = 1
    behind_root_port: bool = False
    kind = "testdev"


class PciTestDevKind(DeviceKind):
    name = "testdev"
    keys = ("count",)
    spec = PciTestDev
    metrics = {"testdev.count": "pci-testdev functions attached"}

    def parse(self, f, ctx):
        n = f.get("count", int, 1)
        if n is not None and not 1 <= n <= 4:
            f.error("count", "must be 1 to 4.")
            return None
        return PciTestDev(n)

    def pci_ids(self, spec):
        return [TESTDEV] * spec.count

    def attach(self, spec, ctx):
        for _ in range(spec.count):
            ctx.add("-device", qemuopt.opts("pci-testdev") + ctx.bus)
        (ctx.file("note", f"{ctx.name}.txt")).write_text("attached\n")

    def after(self, spec, ctx):
        ctx.metrics["testdev.count"] = spec.count
        return []


@dataclass(frozen=True)
class CountLines(Step):
    prefix: str
    n: int
    kind = "count_lines"


class CountLinesKind(StepKind):
    name = "count_lines"
    keys = ("at_least",)

    def parse(self, f, common, ctx):
        prefix = f.get("count_lines", str)
        n = f.get("at_least", int, 1)
        return CountLines(**common, prefix=prefix, n=n) if prefix and n else None

    def recorded(self, step):
        return {"counted_lines"}

    def run(self, step, engine):
        seen = []

        def accept(ln):
            if ln.text.startswith(step.prefix):
                seen.append(ln)
            return len(seen) >= step.n

        engine.watch(step, accept, f"{step.n} lines starting with {step.prefix!r}")
        engine.out.recorded["counted_lines"] = len(seen)
        return f"{len(seen)} lines"


class SerialHas(CheckKind):
    name = "serial-has"
    post = True
    keys = ("text",)

    def parse(self, f, ctx):
        return f.get("text", str)

    def run_post(self, spec, ctx):
        log = (ctx.run_dir / "serial.log").read_text()
        ok = spec in log
        return Finding(
            "serial-has",
            "pass" if ok else "fail",
            f"{spec!r} {'in' if ok else 'not in'} serial.log",
            "check",
        )


SCENARIO = """\
name: plugin-kinds
profile: q35-tcg-pvh
timeout: 60
devices:
  - testdev: {count: 2}
checks:
  - serial-has: {text: '@stage ready'}
  - serial-has: {text: '%s'}
steps:
  - count_lines: 'pci '
    at_least: 3
    timeout: 30
  - expect: '@stage ready'
  - check: pci
metrics:
  testdev.count: {min: 2}
  counted_lines: {min: 3}
"""


def test_throwaway_kinds_run_a_real_scenario(tmp_path, monkeypatch, image_cache, capsys):
    monkeypatch.setenv("PXOS_HIL_CACHE", str(image_cache))
    results = tmp_path / "results"
    good = tmp_path / "good.yaml"
    good.write_text(SCENARIO % "pxOS microkernel")
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.replace("plugin-kinds", "plugin-kinds-bad") % "no such line")
    with DEVICES.added(PciTestDevKind), STEPS.added(CountLinesKind), CHECKS.added(SerialHas):
        assert main(["validate", str(good)]) == 0
        code = main(["run", str(good), str(bad), "-q", "--results", str(results)])
    assert code == 1
    runs = {p.parent.parent.name: json.loads(p.read_text()) for p in results.glob("*/*/run.json")}
    ok, fail = runs["plugin-kinds"], runs["plugin-kinds-bad"]
    assert ok["verdict"]["outcome"] == "pass", ok["verdict"]
    assert ok["metrics"]["testdev.count"] == 2 and ok["metrics"]["counted_lines"] >= 3
    assert [c["outcome"] for c in ok["checks"]] == ["pass", "pass"]
    assert "testdev0.note" in ok["artifacts"]
    assert any(re.search(r"pci-testdev", a) for a in ok["qemu"]["argv"])
    assert fail["verdict"]["outcome"] == "fail"
    assert fail["verdict"]["reason"] == "'no such line' not in serial.log"
    assert fail["verdict"]["step_line"] == 8  # the scenario line of that check
    # Once the test is over, the kinds are gone again.
    assert "testdev" not in DEVICES and "count_lines" not in STEPS
    assert main(["validate", str(good)]) == 2
    assert "unknown device kind 'testdev'" in capsys.readouterr().err
