"""One run, end to end: plan -> image -> machine -> console -> steps -> metrics -> results.

``run_scenario`` never raises for anything that can go wrong during a run: build errors,
QEMU failures, guest faults, timeouts and Ctrl-C all become a Verdict, and the results
directory is written in every case (the ``finally`` below).  Only invalid input is
rejected earlier, by hil.scenario.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from . import host, image, metrics, results
from .console import Console
from .devices import attach
from .errors import BuildError, HilError, InfraError
from .machine import MachineConfig, QemuMachine
from .plan import Plan, make_plan
from .progress import Progress
from .scenario import Scenario
from .steps import Outcome, StepRunner
from .verdict import ERROR, FAIL, INTERRUPTED, PASS, StepFailed, Verdict
from .vgpu.driver import BridgeProcess
from .vgpu.results import gpu_results


@dataclass
class RunOptions:
    results_root: Path = results.DEFAULT_ROOT
    keep_disks: bool = False
    cache_root: Path | None = None  # image cache; None: the default


@dataclass
class RunRecord:
    run_id: str
    run_dir: Path
    verdict: Verdict
    data: dict  # what run.json holds


def run_scenario(scenario: Scenario, opts: RunOptions, progress: Progress) -> RunRecord:
    plan = make_plan(scenario)
    run_id, run_dir = results.new_run_dir(opts.results_root, scenario.name)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    progress.start(scenario.name, plan.profile.name, plan.accel, plan.accel_reason, _rel(run_dir))
    data: dict = {
        "schema": results.SCHEMA,
        "scenario": scenario.name,
        "scenario_file": str(scenario.path),
        "run_id": run_id,
        "started_at": started_at,
        "description": scenario.description,
        **plan.to_json(),
        "git": results.git_info(),
        "host": results.host_info(),
        "durations": {},
        "metrics": {},
        "limits": [],
        "steps": [],
        "idle_windows": [],
        "qemu": {"version": host.version(host.QEMU)},
        "artifacts": {},
    }
    outcome = Outcome([])
    verdict: Verdict | None = None
    machine: QemuMachine | None = None
    bridge: BridgeProcess | None = None
    console: Console | None = None
    img = None
    try:
        img = _build(plan, opts, progress, run_dir, data)
        data["durations"]["build_s"] = round(time.monotonic() - t0, 3)
        cfg = _machine_config(plan, img, run_dir, opts, data)
        with contextlib.ExitStack() as stack:
            watchdogs = []
            if plan.gpu is not None:
                # The bridge listens before QEMU starts and is stopped after it (LIFO).
                o = plan.gpu.options
                t_gpu = time.monotonic()
                bridge = stack.enter_context(
                    BridgeProcess(run_dir, plan.gpu.vram, o.backend, o.budget)
                )
                data["durations"]["gpu_start_s"] = round(time.monotonic() - t_gpu, 3)
                cfg = dataclasses.replace(
                    cfg, device_args=cfg.device_args + tuple(bridge.qemu_args())
                )
            machine = stack.enter_context(QemuMachine(cfg, run_dir))
            if bridge is not None:
                # The bridge leaves when QEMU hangs up; only while QEMU runs is that a fault.
                watchdogs.append(lambda: machine.poll() is None and bridge.check())
            data["qemu"]["argv"] = machine.argv
            progress.launched()
            console = Console(
                machine.console_fd,
                machine.launched,
                run_dir / "serial.log",
                on_line=lambda ln: progress.console(ln.text, ln.t),
            )
            runner = StepRunner(
                scenario, machine, console, plan.accel, on_step=progress.step, watchdogs=watchdogs
            )
            outcome = runner.out
            try:
                runner.run()
                n = len(scenario.steps)
                verdict = Verdict(PASS, f"all {n} step{'s' * (n != 1)} passed")
            except StepFailed as f:
                verdict = f.verdict
            data["durations"]["machine_s"] = round(time.monotonic() - machine.launched, 3)
            data["qemu"]["events"] = [e for _, e in machine.qmp.events()] if machine.qmp else []
            data["qemu"]["kvm_stats"] = _kvm_stats(machine) if plan.accel == "kvm" else None
            data["qemu"]["exit_status"] = machine.stop()
            if bridge is not None:
                bridge.stop()
        if bridge is not None:
            t_check = time.monotonic()
            verdict = gpu_results(plan, run_dir, bridge.stats(), console, verdict, data)
            data["durations"]["gpu_check_s"] = round(time.monotonic() - t_check, 3)
    except KeyboardInterrupt:
        verdict = Verdict(
            INTERRUPTED,
            "interrupted (Ctrl-C or SIGTERM); QEMU was stopped",
            "interrupted",
            **_where(outcome),
            evidence=_tail(console),
        )
    except HilError as e:
        category = e.kind if isinstance(e, (InfraError, BuildError)) else "error"
        verdict = Verdict(ERROR, str(e), category, **_where(outcome), evidence=_tail(console))
    finally:
        if console is not None:
            console.close()
        if verdict is None:  # an unexpected exception is escaping: still leave a record
            verdict = Verdict(ERROR, "internal error in hil (see the traceback)", "internal")
        _finish(scenario, plan, opts, run_dir, data, outcome, verdict, console, img, t0)
    progress.finished(scenario.name, verdict, data["metrics"], _rel(run_dir), _rel(scenario.path))
    return RunRecord(run_id, run_dir, verdict, data)


def _build(plan: Plan, opts: RunOptions, progress: Progress, run_dir: Path, data: dict):
    img = image.build(plan.recipe, cache_root=opts.cache_root, log=progress.build)
    (run_dir / "image-size.txt").write_text(img.size.format() + "\n")
    data["image"] = {
        "key": img.key,
        "version": img.version,
        "cached": img.cached,
        "dir": str(img.dir),
        "size": {
            "text": img.size.text,
            "rodata": img.size.rodata,
            "data": img.size.data,
            "bss": img.size.bss,
            "counted": img.size.counted,
            "budget": img.size.budget,
        },
    }
    state = "cached" if img.cached else "built"
    progress.built(f"{state} {img.key[:12]}, kernel {img.size.counted}/{img.size.budget} bytes")
    return img


def _machine_config(plan: Plan, img, run_dir: Path, opts: RunOptions, data: dict):
    att = attach(list(plan.devices), run_dir)
    data["artifacts"].update({k: v.name for k, v in att.files.items()})
    p = plan.profile
    return MachineConfig(
        name=plan.scenario.name,
        machine=p.machine,
        accel=plan.accel,
        cpu=p.cpu,
        memory_mib=p.memory_mib,
        cpus=p.cpus,
        acpi=p.acpi,
        boot=p.boot,
        disk=img.disk,
        kernel=img.elf,
        initrd=img.payload,
        device_args=tuple(att.args),
        extra_args=p.qemu_args,
    )


def _finish(
    scenario: Scenario,
    plan: Plan,
    opts: RunOptions,
    run_dir: Path,
    data: dict,
    outcome: Outcome,
    verdict: Verdict,
    console,
    img,
    t0: float,
) -> None:
    """Metrics, limits, and every results file -- whatever the verdict."""
    m: dict = {}
    if console is not None:
        m.update(metrics.boot_metrics(console.lines, scenario.ready))
    if outcome.idle_windows:
        m["cpu_idle"] = min(w.idle for w in outcome.idle_windows)
        m["wakeups_per_s"] = max(w.wakeups_per_s for w in outcome.idle_windows)
    m.update((data.get("gpu") or {}).get("metrics", {}))
    m.update(outcome.recorded)
    data["metrics"] = m
    data["idle_windows"] = [w.to_json() for w in outcome.idle_windows]
    data["steps"] = [r.to_json() for r in outcome.results]
    limits = []
    for lim in scenario.limits:
        value = m.get(lim.metric)
        ok, detail = _check_limit(lim, value)
        limits.append(
            {
                "metric": lim.metric,
                "min": lim.min,
                "max": lim.max,
                "value": value,
                "ok": ok,
                "detail": detail,
            }
        )
    data["limits"] = limits
    bad = [x for x in limits if not x["ok"]]
    if verdict.outcome == PASS and bad:
        verdict.outcome, verdict.category = FAIL, "metric"
        verdict.reason = "metric limit not met: " + "; ".join(x["detail"] for x in bad)
        line = next((lim.line for lim in scenario.limits if lim.metric == bad[0]["metric"]), None)
        verdict.step_label, verdict.step_line = "metrics", line
    if not opts.keep_disks:
        for name, path in list(data["artifacts"].items()):
            if name.endswith(".disk"):
                (run_dir / path).unlink(missing_ok=True)
                del data["artifacts"][name]
    for name in ("serial.log", "qemu.log", "qemu.stderr", "image-size.txt"):
        if (run_dir / name).exists():
            data["artifacts"][name] = name
    data["verdict"] = verdict.to_json()
    data["exit_code"] = verdict.exit_code
    data["durations"]["total_s"] = round(time.monotonic() - t0, 3)
    data["artifacts"]["run.json"] = "run.json"
    data["artifacts"]["junit.xml"] = "junit.xml"
    results.write_json(run_dir / "run.json", data)
    results.write_junit(run_dir / "junit.xml", data)


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


def _check_limit(lim, value) -> tuple[bool, str]:
    if value is None:
        return False, f"{lim.metric} was not measured (no data for it in this run)"
    if not isinstance(value, (int, float)):
        return False, f"{lim.metric} = {value!r} is not a number"
    if lim.min is not None and value < lim.min:
        return False, f"{lim.metric} = {value:g} is below min {lim.min:g}"
    if lim.max is not None and value > lim.max:
        return False, f"{lim.metric} = {value:g} is above max {lim.max:g}"
    return True, f"{lim.metric} = {value:g} within limits"


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


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)
