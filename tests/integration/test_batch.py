"""Many runs at once (`hil run -j`, --repeat, --profile matrix, retries), real QEMU under TCG."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from hil.history import History

from .conftest import REPO, assert_no_leftovers, qemu_processes

HEAD = """\
profile: q35-tcg-bios
devices:
  - nvme: {size: 1M}
  - nic: {model: e1000}
steps:
  - expect: '@stage ready'
    timeout: 30
  - idle: 6
"""
# ending -> (extra steps, outcome, QEMU exit status)
ENDINGS = {
    "shutdown": ("  - send: shutdown\n  - exit: shutdown\n", "pass", 1),
    "ud": ("  - send: ud\n  - expect: never\n    timeout: 20\n", "fail", 77),
    "pf": ("  - send: pf\n  - expect: never\n    timeout: 20\n", "fail", 93),
    "quit": ("", "pass", 0),  # hil stops QEMU itself (QMP quit)
}


def _qmp_and_pty(argv: list[str]) -> tuple[str, str]:
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    qmp = next(c for c in chardevs if c.startswith("socket,id=qmp"))
    pty = next(c for c in chardevs if c.startswith("serial,id=com1"))
    return qmp.split("path=")[1], pty.split("path=")[1]


def test_four_parallel_runs_share_no_socket_file_or_status(hil):
    scenarios = {e: hil.scenario(HEAD + body) for e, (body, _, _) in ENDINGS.items()}
    p = subprocess.Popen(
        hil.cmd(
            "run",
            *map(str, scenarios.values()),
            "-j",
            "4",
            "--keep-disks",
            "--results",
            str(hil.results),
        ),
        cwd=REPO,
        env=hil.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # All four QEMUs must be alive at the same moment (each idles 6 s after booting).
    names = [f"pxos-{sc.stem}," for sc in scenarios.values()]
    most = 0
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline and most < 4:
        most = max(most, sum(bool(qemu_processes(n)) for n in names))
        time.sleep(0.05)
    out, err = p.communicate(timeout=180)
    assert most == 4, f"at most {most} QEMUs ran at once\n{out}{err}"
    assert p.returncode == 1, out + err  # the worst of pass, pass, fail, fail

    runs = {}
    for ending, sc in scenarios.items():
        (d,) = (hil.results / sc.stem).iterdir()
        runs[ending] = (d, json.loads((d / "run.json").read_text()))
    sockets, ptys, files = set(), set(), set()
    for ending, (d, run) in runs.items():
        _, outcome, status = ENDINGS[ending]
        assert run["verdict"]["outcome"] == outcome, (ending, run["verdict"])
        assert run["qemu"]["exit_status"] == status, (ending, run["qemu"])
        assert run["batch"]["repeat_index"] == 0 and run["batch"]["attempt"] == 1
        argv = run["qemu"]["argv"]
        qmp, pty = _qmp_and_pty(argv)
        sockets.add(qmp)
        ptys.add(pty)
        # every file QEMU was given that is not the shared, read-only boot image
        # (snapshot=on) or firmware lives in this run's own directory
        for arg in argv:
            for part in arg.split(","):
                path = part.split("=", 1)[-1]
                if path.startswith("/") and ("pcap" in path or path.endswith((".img", ".log"))):
                    if path.endswith("disk.img"):
                        assert "snapshot=on" in arg
                        continue
                    assert Path(path).parent == d, (ending, path)
                    files.add(path)
        for name in ("nvme0.img", "nic0.pcap", "serial.log", "qemu.log"):
            assert (d / name).is_file(), (ending, name)
        serial = (d / "serial.log").read_text()
        assert ("bye" in serial) == (ending == "shutdown")
        assert ("!EXC vec=6 " in serial) == (ending == "ud")
    assert len(sockets) == 4 and len(ptys) == 4
    assert len(files) == 4 * 3  # nvme disk, pcap, qemu.log per run
    assert len({os.stat(f).st_ino for f in files}) == 12

    with History.at(hil.results) as h:
        rows = [h.recent(sc.stem)[0] for sc in scenarios.values()]
    assert len({r.batch_id for r in rows}) == 1
    assert sorted(r.outcome for r in rows) == ["fail", "fail", "pass", "pass"]
    assert_no_leftovers(hil)


def test_repeat_and_profile_matrix_report_medians(hil):
    sc = hil.scenario("""\
steps:
  - expect: '@stage ready'
    timeout: 30
  - idle: 0.3
  - send: shutdown
  - exit: shutdown
""")
    r = hil(
        "run",
        str(sc),
        "--profile",
        "q35-tcg-bios",
        "--profile",
        "q35-tcg-pvh",
        "--repeat",
        "3",
        "-j",
        "2",
    )
    assert r.code == 0, r.out + r.err
    assert len(r.run_dirs) == 6
    runs = [json.loads((d / "run.json").read_text()) for d in r.run_dirs]
    keys = sorted((x["profile"]["name"], x["batch"]["repeat_index"]) for x in runs)
    assert keys == [(p, i) for p in ("q35-tcg-bios", "q35-tcg-pvh") for i in range(3)]
    table = r.out[r.out.index("outcome  scenario") :].splitlines()
    assert len(table) == 3
    for profile in ("q35-tcg-bios", "q35-tcg-pvh"):
        (row,) = [ln for ln in table if profile in ln]
        assert row.startswith("PASS") and "3/3 pass" in row and "n=3" in row


def _flaky_qemu(tmp_path: Path, fail_times: int) -> dict:
    """A PATH where qemu-system-x86_64 fails to start the first ``fail_times`` launches
    (a transient host problem), then is the real QEMU."""
    import shutil

    bindir = tmp_path / "flaky-bin"
    bindir.mkdir()
    real = shutil.which("qemu-system-x86_64")
    count = tmp_path / "launches"
    (bindir / "qemu-system-x86_64").write_text(f"""#!/bin/sh
[ "$1" = --version ] && exec {real} "$@"
echo x >> {count}
if [ "$(wc -l < {count})" -le {fail_times} ]; then
  echo "qemu-system-x86_64: injected start-up failure" >&2
  exit 1
fi
exec {real} "$@"
""")
    (bindir / "qemu-system-x86_64").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def test_infra_error_is_retried_and_a_pass_on_retry_is_flaky(hil, tmp_path):
    sc = hil.scenario("profile: q35-tcg-bios\nsteps:\n  - expect: '@stage ready'\n")
    r = hil("run", str(sc), env={**hil.env, **_flaky_qemu(tmp_path, 1)})
    assert r.code == 0, r.out + r.err
    # In the order they ran (the attempt number), not by directory name.
    runs = [json.loads((d / "run.json").read_text()) for d in r.run_dirs]
    first, second = sorted(runs, key=lambda run: run["batch"]["attempt"])
    assert first["verdict"]["outcome"] == "error" and "injected" in first["verdict"]["reason"]
    assert second["verdict"]["outcome"] == "pass"
    assert second["batch"]["attempt"] == 2 and second["batch"]["flaky"] is True
    assert second["batch"]["retry_of"] == first["run_id"]
    assert "FLAKY" in r.out and "1 retry" in r.out


def test_persistent_infra_error_is_retried_once_then_reported(hil, tmp_path):
    sc = hil.scenario("profile: q35-tcg-bios\nsteps:\n  - expect: '@stage ready'\n")
    env = {**hil.env, **_flaky_qemu(tmp_path, 99)}
    r = hil("run", str(sc), env=env)
    assert r.code == 3, r.out + r.err
    assert len(r.run_dirs) == 2
    assert "QEMU exited during start-up (status 1): qemu-system-x86_64: injected" in r.out
    r = hil("run", str(sc), "--retries", "2", env=env)
    assert r.code == 3 and len(r.run_dirs) == 3


def test_a_test_failure_is_never_retried(hil):
    sc = hil.scenario("""\
profile: q35-tcg-bios
steps:
  - expect: 'this never comes'
    timeout: 1
""")
    r = hil("run", str(sc), "--retries", "3")
    assert r.code == 1 and len(r.run_dirs) == 1


def test_ctrl_c_stops_a_parallel_batch(hil):
    scs = [hil.scenario(HEAD.replace("idle: 6", "idle: 60")) for _ in range(2)]
    p = hil.spawn(*scs, "-j", "2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(qemu_processes(f"pxos-{s.stem},") for s in scs):
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, out + err
    assert "Traceback" not in err
    for s in scs:
        (d,) = (hil.results / s.stem).iterdir()
        assert json.loads((d / "run.json").read_text())["verdict"]["outcome"] == "interrupted"
    assert_no_leftovers(hil)


def test_bad_jobs_value_is_invalid_input(hil):
    r = hil("run", "scenarios/boot.yaml", "-j", "0")
    assert r.code == 2 and "'0' is not a whole number of at least 1" in r.err


def test_killed_hil_takes_every_parallel_qemu_with_it(hil):
    scs = [hil.scenario(HEAD.replace("idle: 6", "idle: 60")) for _ in range(2)]
    p = subprocess.Popen(
        hil.cmd("run", *map(str, scs), "-j", "2", "--results", str(hil.results)),
        cwd=REPO,
        env=hil.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(qemu_processes(f"pxos-{s.stem},") for s in scs):
        time.sleep(0.1)
    p.kill()
    p.wait()
    # Each run process gets SIGTERM from the kernel (parent death), stops its QEMU and
    # writes its results.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(qemu_processes(f"pxos-{s.stem},") for s in scs):
        time.sleep(0.1)
    assert not any(qemu_processes(f"pxos-{s.stem},") for s in scs)
    deadline = time.monotonic() + 30
    for s in scs:
        (d,) = (hil.results / s.stem).iterdir()
        while time.monotonic() < deadline and not (d / "run.json").exists():
            time.sleep(0.1)
        assert json.loads((d / "run.json").read_text())["verdict"]["outcome"] == "interrupted"
    assert_no_leftovers(hil)


def test_interrupted_nightly_still_writes_its_report(hil):
    sc = hil.scenario(HEAD.replace("idle: 6", "idle: 60"))
    p = subprocess.Popen(
        hil.cmd("nightly", str(sc), "--repeat", "1", "--results", str(hil.results)),
        cwd=REPO,
        env=hil.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not qemu_processes(f"pxos-{sc.stem},"):
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, out + err
    summary = json.loads((hil.results / "nightly" / "latest" / "summary.json").read_text())
    assert summary["interrupted"] and summary["exit_code"] == 130
    assert summary["keys"][0]["status"] == "interrupted"
    assert "INTERRUPTED" in (hil.results / "nightly" / "latest" / "summary.md").read_text()
    assert_no_leftovers(hil)


def _vram_inodes(pid: int) -> set[int]:
    """Inodes of the VRAM memfds (the bridge's 'pxos-vram') a process has mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {int(ln.split()[4]) for ln in maps.splitlines() if "/memfd:pxos-vram" in ln}


def test_two_vgpu_runs_at_once_have_their_own_bridge_socket_and_vram(hil):
    """The same vGPU scenario twice in parallel: one name, two machines, two bridges, two
    VRAMs (seen in the two QEMUs' memory maps while both run)."""
    sc = hil.scenario(f"""\
profile: q35-tcg-vgpu
timeout: 120
gpu:
  program: {REPO / "pxi" / "programs" / "hello.pxs"}
steps:
  - expect: '@stage ready'
    timeout: 60
  - expect: 'Hello from GPU OS!'
    timeout: 60
  - idle: 6
  - send: shutdown
  - exit: shutdown
""")
    p = hil.spawn(sc, "--repeat", "2", "-j", "2")
    vram: dict[int, set[int]] = {}
    deadline = time.monotonic() + 150
    while len(vram) < 2 and p.poll() is None and time.monotonic() < deadline:
        for line in qemu_processes(f"pxos-{sc.stem},"):
            pid = int(line.split()[0])
            vram[pid] = vram.get(pid) or _vram_inodes(pid)
        vram = {pid: inodes for pid, inodes in vram.items() if inodes}
        time.sleep(0.05)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, out + err
    assert len(vram) == 2, f"did not see two QEMUs with VRAM mapped at once: {vram}"
    first, second = vram.values()
    assert first.isdisjoint(second), f"the two machines share VRAM: {vram}"

    run_dirs = sorted((hil.results / sc.stem).iterdir())
    assert len(run_dirs) == 2
    sockets, instructions = set(), []
    for d in run_dirs:
        run = json.loads((d / "run.json").read_text())
        argv = run["qemu"]["argv"]
        chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
        (vgpu,) = [c for c in chardevs if c.startswith("socket,id=vgpu")]
        sockets.add(vgpu.split("path=")[1])
        assert (d / "trace.jsonl").is_file() and (d / "bridge.json").is_file()
        instructions.append(run["gpu"]["metrics"]["gpu.instructions"])
    assert len(sockets) == 2 and not any(os.path.exists(s) for s in sockets)
    # One program, two independent VRAMs: the same deterministic work in each.
    assert instructions[0] > 0 and instructions[0] == instructions[1], instructions
    with History.at(hil.results) as h:
        rows = h.recent(sc.stem)
    assert len(rows) == 2 and all(r.wgpu_adapter for r in rows)  # the executor's adapter
    assert sorted(r.metrics["gpu.instructions"] for r in rows) == sorted(instructions)
    assert all(r.outcome == "pass" for r in rows)
