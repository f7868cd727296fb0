"""The virtual GPU in the loop: real QEMU (TCG), real ivshmem, the bridge running the
wgpu executor on lavapipe, the microkernel as privilege broker."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .conftest import REPO, assert_no_leftovers, qemu_processes

PROGRAMS = REPO / "tests" / "programs"


def bridge_processes(run_dir: Path) -> list[str]:
    p = subprocess.run(
        ["pgrep", "-a", "-f", f"hil.vgpu.bridge.*{run_dir}"], capture_output=True, text=True
    )
    return [ln for ln in p.stdout.splitlines() if "pgrep" not in ln]


def gpu_scenario(hil, program: Path, steps: str, extra: str = "") -> Path:
    return hil.scenario(
        f"profile: q35-tcg-vgpu\ntimeout: 60\n{extra}gpu: {{program: {program}}}\nsteps:\n{steps}"
    )


def kernel_sha(run: dict) -> str:
    return hashlib.sha256((Path(run["image"]["dir"]) / "kernel.elf").read_bytes()).hexdigest()


def test_gpu_hello(hil):
    r = hil("run", "scenarios/gpu-hello.yaml")
    assert r.code == 0, r.out + r.err
    run = r.run
    m = run["metrics"]
    assert m["gpu.requests"] == 45 and m["gpu.denied"] == 0  # 7 UART set-up + 19 x (poll, write)
    assert m["gpu.instructions"] > 0 and m["gpu.roundtrip_us.p50"] > 0
    assert 1.0 <= m["gpu.wakeups_per_request"] < 2.0
    assert [x["divergence"] for x in run["gpu"]["reference"]] == [None, None]
    assert run["gpu"]["adapter"] and run["gpu"]["ended"] == "halted"
    d = r.run_dirs[0]
    assert (d / "trace.jsonl").is_file() and (d / "bridge.json").is_file()
    # the same run, replayed from the command line
    c = subprocess.run(
        hil.cmd("compare", str(d)), capture_output=True, text=True, cwd=REPO, env=hil.env
    )
    assert c.returncode == 0 and c.stdout.count("SAME") == 2, c.stdout + c.stderr


def test_other_program_same_kernel(hil):
    hello = hil("run", "scenarios/gpu-hello.yaml")
    sc = gpu_scenario(
        hil,
        PROGRAMS / "goodbye.pxs",
        """\
  - expect: 'Goodbye from another pixel program'
    timeout: 30
""",
    )
    bye = hil("run", str(sc))
    assert hello.code == 0 and bye.code == 0, bye.out + bye.err
    serial = (bye.run_dirs[0] / "serial.log").read_text()
    assert "Hello from GPU OS!" not in serial
    assert kernel_sha(hello.run) == kernel_sha(bye.run)  # same microkernel binary
    assert hello.run["image"]["key"] != bye.run["image"]["key"]  # only the payload differs


def test_forbidden_requests_are_denied_and_reported(hil):
    sc = gpu_scenario(
        hil,
        PROGRAMS / "deny.pxs",
        """\
  - lines:
      - {regex: '^!DENY kind=2 addr=cf8 width=20$'}
      - {regex: '^!DENY kind=4 addr=1000 width=20$'}
      - 'still here'
    ordered: false
    timeout: 30
  - expect: {regex: '^@gpu end state=4 '}
""",
    )
    r = hil("run", str(sc))
    assert r.code == 0, r.out + r.err
    run = r.run
    assert run["metrics"]["gpu.denied"] == 2
    assert len(run["gpu"]["denials"]) == 2
    states = {t["thread"]: t["status"] for t in run["gpu"]["threads"]}
    assert states == {0: "FAULTED", 1: "FAULTED", 2: "HALTED"}


def test_device_interrupts_reach_the_gpu(hil):
    sc = gpu_scenario(
        hil,
        PROGRAMS / "echo.pxs",
        """\
  - expect: 'echo ready'
    timeout: 30
  - send: x
  - expect: 'got x'
  - send: q
  - expect: 'echo done'
""",
    )
    r = hil("run", str(sc))
    assert r.code == 0, r.out + r.err
    assert r.run["metrics"]["gpu.events"] >= 2


def test_planted_difference_is_caught(hil, tmp_path):
    r = hil("run", "scenarios/gpu-hello.yaml")
    assert r.code == 0
    records = [json.loads(x) for x in (r.run_dirs[0] / "trace.jsonl").read_text().splitlines()]
    for rec in records:
        if rec["t"] == "respond" and rec["items"][0][2] == 0x60:
            rec["items"][0][2] = 0  # the UART says "busy" where it said "ready"
            break
    else:
        raise AssertionError("no line-status response in the trace")
    planted = tmp_path / "trace.jsonl"
    planted.write_text("\n".join(json.dumps(x) for x in records) + "\n")
    c = subprocess.run(
        hil.cmd("compare", str(planted), "--backend", "numpy"),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=hil.env,
    )
    assert c.returncode == 1, c.stdout + c.stderr
    assert "DIFF  numpy replay diverges at request #" in c.stdout
    assert "thread 0 at pc" in c.stdout and "`out r5, r4, 8`" in c.stdout


def test_compare_without_a_trace_is_invalid_input(hil, tmp_path):
    c = subprocess.run(
        hil.cmd("compare", str(tmp_path)), capture_output=True, text=True, cwd=REPO, env=hil.env
    )
    assert c.returncode == 2 and "no trace.jsonl" in c.stderr and "Traceback" not in c.stderr


def test_runaway_program_times_out_with_thread_positions(hil):
    sc = gpu_scenario(
        hil,
        PROGRAMS / "spin.pxs",
        """\
  - expect: '@gpu start'
    timeout: 30
  - expect: 'never printed'
    timeout: 100
""",
        extra="",
    )
    text = sc.read_text().replace("timeout: 60", "timeout: 8")
    sc.write_text(text)
    r = hil("run", str(sc))
    assert r.code == 4, r.out + r.err
    reason = r.run["verdict"]["reason"]
    assert "GPU threads at the end: t0 pc " in reason and "RUNNABLE" in reason
    assert "t1 pc " in reason


def _wait_for(pred, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("condition never held")


def test_bridge_death_is_an_infrastructure_error(hil):
    sc = gpu_scenario(
        hil,
        PROGRAMS / "spin.pxs",
        """\
  - expect: '@gpu start'
    timeout: 30
  - idle: 30
""",
    )
    p = hil.spawn(sc, "--retries", "0")  # this run's own error, not the retry's
    run_dir = _wait_for(lambda: next(hil.results.glob(f"{sc.stem}/*"), None))
    _wait_for(
        lambda: (
            "@gpu start" in (run_dir / "serial.log").read_text()
            if (run_dir / "serial.log").exists()
            else False
        )
    )
    pid = int(_wait_for(lambda: bridge_processes(run_dir))[0].split()[0])
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 5  # detected and cleaned up within seconds
    assert p.returncode == 3, out + err
    assert "vGPU bridge exited unexpectedly" in out
    assert not qemu_processes(f"pxos-{sc.stem},")
    assert_no_leftovers(hil)


def test_qemu_death_is_reported(hil):
    sc = gpu_scenario(
        hil,
        PROGRAMS / "spin.pxs",
        """\
  - expect: '@gpu start'
    timeout: 30
  - idle: 30
""",
    )
    p = hil.spawn(sc)
    run_dir = _wait_for(lambda: next(hil.results.glob(f"{sc.stem}/*"), None))
    _wait_for(lambda: bridge_processes(run_dir))
    qemu = _wait_for(
        lambda: [ln for ln in qemu_processes(f"pxos-{sc.stem},") if "qemu-system" in ln.split()[1]]
    )
    time.sleep(2)  # into the idle window, the GPU spinning
    os.kill(int(qemu[0].split()[0]), signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "QEMU was killed by signal 9" in out, out + err
    assert not bridge_processes(run_dir)
    assert_no_leftovers(hil)


def test_bridge_leaves_on_its_own_when_qemu_dies(tmp_path):
    """Without hil stopping it: QEMU hangs up the ivshmem socket, the bridge exits."""
    from hil import host
    from hil.vgpu.driver import BridgeProcess

    with BridgeProcess(tmp_path, 1 << 20, "numpy", 1000) as bridge:
        qemu = subprocess.Popen(
            [
                host.which(host.QEMU),
                "-machine",
                "q35,accel=tcg",
                "-S",
                "-nodefaults",
                "-display",
                "none",
                *bridge.qemu_args(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for(
                lambda: (
                    "QEMU connected" in (tmp_path / "bridge.log").read_text()
                    if (tmp_path / "bridge.log").exists()
                    else False
                ),
                30,
            )
        finally:
            qemu.kill()
            qemu.wait()
        t0 = time.monotonic()
        _wait_for(lambda: bridge.proc.poll() is not None, 10)
        assert time.monotonic() - t0 < 3
        assert bridge.proc.returncode == 0
    log = (tmp_path / "bridge.log").read_text()
    assert "QEMU hung up" in log
    assert json.loads((tmp_path / "bridge.json").read_text())["ended"] == "qemu-exited"


def test_gpu_compute_keeps_the_cpu_halted(hil):
    r = hil("run", "scenarios/gpu-compute.yaml")
    assert r.code == 0, r.out + r.err
    m = r.run["metrics"]
    assert m["cpu_idle"] >= 0.99
    assert m["gpu.instructions"] > 3e7 and m["gpu.requests"] < 100


def test_hundreds_of_requests_in_flight_through_the_real_kernel(hil):
    """512 requests (256 threads x 2) through the 64-entry ring while the kernel answers
    during dispatches: every request answered once, correctly; no thread left BLOCKED."""
    sc = gpu_scenario(
        hil,
        PROGRAMS / "flood.pxs",
        """\
  - expect: 'flood ok 00000100'
    timeout: 90
  - expect: {regex: '^@gpu end state=3 '}
  - send: shutdown
  - exit: shutdown
""",
    )
    r = hil("run", str(sc))
    assert r.code == 0, r.out + r.err
    b = json.loads((r.run_dirs[0] / "bridge.json").read_text())
    assert b["requests"] == 512 + 43 and b["responses"] == b["requests"], b
    assert b["problems"] == 0 and b["ended"] == "halted"
    assert all(t["status"] == "HALTED" for t in b["threads"])
