"""One run, end to end: plan -> image -> machine -> console -> steps -> checks -> judge
-> record.

``run_scenario`` never raises for anything that can go wrong during a run: build errors,
QEMU failures, guest faults, timeouts and Ctrl-C all become a verdict, and the results
directory is written in every case (the ``finally`` below).  Invalid input was rejected
earlier, when the plan was made.  This module knows no device kind, step kind or check
kind by name: it asks the registries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from . import checks as chk
from . import host, hostload, results
from .console import Console
from .devices import AfterContext, Finding, attach, kind_of
from .errors import BuildError, HilError, InfraError
from .judge import check_limit, judge
from .machine import MachineConfig, QemuMachine
from .paths import rel
from .plan import Plan
from .progress import Progress
from .record import BatchInfo, CheckResult, RunRecord
from .steps import Outcome, StepRunner
from .verdict import ERROR, INTERRUPTED, PASS, StepFailed, Verdict


@dataclass
class RunOptions:
    results_root: Path = results.DEFAULT_ROOT
    keep_disks: bool = False
    cache_root: Path | None = None  # image cache; None: the default


def run_scenario(
    plan: Plan, opts: RunOptions, progress: Progress, batch: BatchInfo | None = None
) -> RunRecord:
    sc = plan.scenario
    run_id, run_dir = results.new_run_dir(opts.results_root, sc.name)
    t0 = time.monotonic()
    rec = RunRecord(
        scenario=sc.name,
        scenario_file=str(sc.path),
        run_id=run_id,
        run_dir=run_dir,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        description=sc.description,
        plan=plan.to_json(),
        git=results.git_info(),
        host=results.host_info(),
        qemu={"version": host.version(host.QEMU)},
        batch=batch,
    )
    results.write_record(rec)  # a killed run still leaves a (partial) record
    load_start = hostload.sample()
    progress.start(sc.name, plan.profile.name, plan.accel, plan.accel_reason, rel(run_dir))
    outcome = Outcome([])
    steps_verdict: Verdict | None = None
    console: Console | None = None
    helpers: dict[int, object] = {}
    started = False  # QEMU (and so every helper) was started: there is a run to look at
    try:
        img = _build(plan, opts, progress, rec)
        rec.durations["build_s"] = round(time.monotonic() - t0, 3)
        with contextlib.ExitStack() as stack:
            # Helpers (the vGPU bridge) listen before QEMU starts and stop after it (LIFO).
            t_helpers = time.monotonic()
            for i, spec in enumerate(plan.devices):
                if (h := kind_of(spec).helper(spec, run_dir)) is not None:
                    helpers[i] = stack.enter_context(h)
            if any(spec.kind == "vgpu" for spec in plan.devices):
                rec.durations["gpu_start_s"] = round(time.monotonic() - t_helpers, 3)
            machine = stack.enter_context(
                QemuMachine(_machine_config(plan, img, run_dir, rec, helpers), run_dir)
            )
            # A helper leaves when QEMU hangs up; only while QEMU runs is that a fault.
            watchdogs = [lambda h=h: machine.poll() is None and h.check() for h in helpers.values()]
            started = True
            rec.qemu["argv"] = machine.argv
            progress.launched()
            console = Console(
                machine.console_fd,
                machine.launched,
                run_dir / "serial.log",
                on_line=lambda ln: progress.console(ln.text, ln.t),
            )
            runner = StepRunner(
                sc,
                machine,
                console,
                plan.accel,
                monitor=machine.qmp,
                on_step=progress.step,
                watchdogs=watchdogs,
                plan=plan,
            )
            outcome = runner.out
            try:
                runner.run()
                n = len(sc.steps)
                steps_verdict = Verdict(PASS, f"all {n} step{'s' * (n != 1)} passed")
            except StepFailed as f:
                steps_verdict = f.verdict
            rec.durations["machine_s"] = round(time.monotonic() - machine.launched, 3)
            rec.qemu["events"] = [e for _, e in machine.qmp.events()] if machine.qmp else []
            rec.qemu["kvm_stats"] = _kvm_stats(machine) if plan.accel == "kvm" else None
            rec.qemu["exit_status"] = machine.stop()
            for h in helpers.values():
                h.stop()
    except KeyboardInterrupt:
        steps_verdict = Verdict(
            INTERRUPTED,
            "interrupted (Ctrl-C or SIGTERM); QEMU was stopped",
            "interrupted",
            **_where(outcome),
            evidence=_tail(console),
        )
    except HilError as e:
        category = e.kind if isinstance(e, (InfraError, BuildError)) else "error"
        steps_verdict = Verdict(ERROR, str(e), category, **_where(outcome), evidence=_tail(console))
    finally:
        if console is not None:
            console.close()
        if steps_verdict is None:  # an unexpected exception is escaping: still leave a record
            steps_verdict = Verdict(ERROR, "internal error in hil (see the traceback)", "internal")
            rec.verdict = steps_verdict
            results.write_record(rec)
    # Nothing below can be interrupted half-way into a missing record: a Ctrl-C now
    # ends the post-run checks, which then count as not done.
    load_end = hostload.sample()
    try:
        load = hostload.metrics(load_start, load_end)
        _after(plan, rec, outcome, steps_verdict, console, helpers if started else None, opts, load)
    except KeyboardInterrupt:
        rec.verdict = Verdict(INTERRUPTED, "interrupted during the post-run checks", "interrupted")
    rec.durations["total_s"] = round(time.monotonic() - t0, 3)
    if rec.batch is not None:
        rec.batch.flaky = rec.outcome == PASS and rec.batch.attempt > 1
    results.write_record(rec)
    progress.finished(sc.name, rec.verdict, rec.metrics, rel(run_dir), rel(sc.path))
    return rec


def _after(plan, rec, outcome, steps_verdict, console, helpers, opts, load: dict) -> None:
    """Metrics, the devices' findings, the post-run checks and the judge.  ``helpers``:
    device index -> its helper, or None when QEMU never started (nothing to collect)."""
    from .images.kinds import IMAGES

    lines = console.lines if console is not None else []
    m = IMAGES[plan.image_kind].boot_metrics(lines, plan.scenario.ready) if lines else {}
    if outcome.idle_windows:
        m["cpu_idle"] = min(w.idle for w in outcome.idle_windows)
        m["wakeups_per_s"] = max(w.wakeups_per_s for w in outcome.idle_windows)
    findings: list[Finding] = []
    ctx = AfterContext(plan, rec.run_dir, lines, steps_verdict.outcome)
    ctx.artifacts.update(rec.artifacts)  # what the devices left (disks), for the checks
    for i, spec in enumerate(plan.devices if helpers is not None else ()):
        ctx.helper = helpers.get(i)
        findings += kind_of(spec).after(spec, ctx)
    if steps_verdict.outcome == PASS and not any(f.outcome == ERROR for f in findings):
        t_check = time.monotonic()
        for c in plan.checks:
            found = chk.CHECKS[c.kind].run_post(c.spec, ctx)
            found.line = found.line or c.line
            findings.append(found)
            rec.checks.append(CheckResult(c.kind, found.outcome, found.reason))
        if plan.checks:
            rec.durations["gpu_check_s"] = round(time.monotonic() - t_check, 3)
    m.update(ctx.metrics)
    m.update(load)
    m.update(outcome.recorded)
    rec.metrics = m
    rec.sections.update(ctx.sections)
    rec.artifacts.update(ctx.artifacts)
    rec.idle_windows = [w.to_json() for w in outcome.idle_windows]
    rec.steps = [r.to_json() for r in outcome.results]
    rec.limits = [check_limit(lim, m.get(lim.metric)) for lim in plan.scenario.limits]
    rec.verdict = judge(steps_verdict, findings, rec.limits)
    if not opts.keep_disks:
        for name, path in list(rec.artifacts.items()):
            if name.endswith(".disk"):
                (rec.run_dir / path).unlink(missing_ok=True)
                del rec.artifacts[name]
    for name in ("serial.log", "qemu.log", "qemu.stderr", "image-size.txt"):  # if present
        if (rec.run_dir / name).exists():
            rec.artifacts[name] = name
    rec.artifacts["run.json"] = "run.json"
    rec.artifacts["junit.xml"] = "junit.xml"


def _build(plan: Plan, opts: RunOptions, progress: Progress, rec: RunRecord):
    from .images.kinds import IMAGES

    built = IMAGES[plan.image_kind].build(plan.image, plan.recipe, opts.cache_root, progress.build)
    for name, text in built.files.items():
        (rec.run_dir / name).write_text(text)
    rec.image = built.record
    progress.built(built.summary)
    return built


def _machine_config(plan: Plan, img, run_dir: Path, rec: RunRecord, helpers) -> MachineConfig:
    att = attach(list(plan.devices), run_dir, helpers)
    rec.artifacts.update({k: v.name for k, v in att.files.items()})
    p = plan.profile
    memory = p.memory_mib
    if img.memory_mb > memory:  # e.g. a Linux image's initramfs needs room to unpack
        memory = img.memory_mb
        rec.qemu["memory_note"] = (
            f"the profile gives {p.memory_mib} MiB; the image needs {img.memory_mb}: ran with that"
        )
    return MachineConfig(
        name=plan.scenario.name,
        machine=p.machine,
        accel=plan.accel,
        cpu=p.cpu,
        memory_mib=memory,
        cpus=p.cpus,
        acpi=p.acpi,
        iommu=p.iommu,
        iommu_intremap=p.iommu_intremap,
        boot=p.boot,
        disk=img.disk,
        kernel=img.kernel,
        initrd=img.initrd,
        append=img.append,
        device_args=tuple(att.args),
        extra_args=p.qemu_args,
    )


def _kvm_stats(machine: QemuMachine) -> dict | None:
    """KVM's per-vCPU exit counters summed at the end of the run (None if unavailable)."""
    if machine.poll() is not None or machine.qmp is None or not machine.qmp.connected:
        return None
    try:
        res = machine.qmp.cmd("query-stats", target="vcpu", providers=[{"provider": "kvm"}])
    except InfraError:
        return None
    out: dict[str, int] = {}
    for vcpu in res:
        for s in vcpu["stats"]:
            if isinstance(s["value"], int) and s["name"].endswith(("exits", "_wait_ns")):
                out[s["name"]] = out.get(s["name"], 0) + s["value"]
    return out


def _where(outcome: Outcome) -> dict:
    running = next((r for r in outcome.results if r.status == "running"), None)
    if running is None:
        return {}
    s = running.step
    return {"step": s.index, "step_label": s.label(), "step_line": s.line}


def _tail(console: Console | None) -> list[str]:
    if console is None:
        return []
    return [f"{ln.t * 1000:11.3f} {ln.text}" for ln in console.tail(20)]
