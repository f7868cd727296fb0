"""The `hil` command line.  Exit codes: docs/exit-codes.md (hil.errors holds the numbers)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import EXIT_INVALID, EXIT_PASS, HilError
from .yamlsrc import ValidationError

REPO = Path(__file__).resolve().parent.parent


def _scenario_files(args: list[str]) -> list[Path]:
    """Files and directories (every *.yaml inside, sorted) -> scenario files."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = sorted(p.glob("*.yaml"))
            if not found:
                raise ValidationError([f"{p}: this directory holds no *.yaml scenario files."])
            out += found
        else:
            out.append(p)
    return out


def _load_all(paths: list[str], profile: str | None):
    from .errors import UserError
    from .plan import make_plan
    from .scenario import load_scenario

    scenarios, problems = [], []
    for path in _scenario_files(paths):
        try:
            sc = load_scenario(path, profile)
            make_plan(sc)  # e.g. assembles the GPU program: its mistakes are input errors too
            scenarios.append(sc)
        except ValidationError as e:
            problems += e.problems
        except UserError as e:
            problems.append(f"{path}: {e}")
    if problems:
        raise ValidationError(problems)
    return scenarios


def cmd_run(ns: argparse.Namespace) -> int:
    from .progress import Progress
    from .runner import RunOptions, run_scenario
    from .verdict import EXIT_CODES, worst

    scenarios = _load_all(ns.scenarios, ns.profile)
    opts = RunOptions(results_root=Path(ns.results).resolve(), keep_disks=ns.keep_disks)
    progress = Progress.auto(quiet=ns.quiet)
    outcomes = []
    for sc in scenarios:
        record = run_scenario(sc, opts, progress)
        outcomes.append(record.verdict.outcome)
        if record.verdict.outcome == "interrupted":
            break
    return EXIT_CODES[worst(outcomes)]


def cmd_validate(ns: argparse.Namespace) -> int:
    for sc in _load_all(ns.scenarios, ns.profile):
        n = len(sc.steps)
        print(
            f"ok  {sc.path}: {n} step{'s' * (n != 1)}, profile {sc.profile.name}, "
            f"{len(sc.devices)} device{'s' * (len(sc.devices) != 1)}"
        )
    return EXIT_PASS


def cmd_doctor(ns: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(sys.stdout)


def cmd_compare(ns: argparse.Namespace) -> int:
    """Replay a vGPU run's trace without QEMU; exit 1 on the first divergence."""
    from .errors import UserError
    from .vgpu.replay import replay
    from .vgpu.trace import TraceError, read

    run = Path(ns.run)
    path = run / "trace.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise UserError(
            f"{run}: no trace.jsonl here. Give a results directory of a run with "
            "a virtual GPU (results/<scenario>/<run-id>/) or a trace file."
        )
    try:
        records = read(path)
    except TraceError as e:
        raise UserError(str(e)) from None
    p = records[0]["program"]
    print(
        f"{path}: program {p['sha256'][:16]} ({p['npix']} pixels, {p['threads']} threads), "
        f"recorded on {records[0]['backend']} ({records[0]['adapter']})"
    )
    worst = 0
    for backend in ns.backend or ["wgpu", "numpy"]:
        r = replay(records, backend)
        if r.divergence:
            print(f"DIFF  {r.divergence}")
            worst = 1
        else:
            print(
                f"SAME  {backend}: {r.runs} runs, {r.requests} requests, {r.steps} "
                "instructions, final thread states and memory identical"
            )
    return worst


def cmd_test(ns: argparse.Namespace) -> int:
    import pytest

    return int(pytest.main([str(REPO / "tests"), *ns.pytest_args]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hil",
        description="pxOS hardware-in-the-loop testbed.",
        epilog="Exit codes: 0 pass, 1 test failure, 2 invalid input, 3 infrastructure "
        "error, 4 timeout, 130 interrupted (docs/exit-codes.md).",
    )
    p.add_argument("--version", action="version", version=f"hil {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="build, boot and check scenarios")
    r.add_argument(
        "scenarios",
        nargs="+",
        metavar="SCENARIO",
        help="scenario YAML files or directories of them",
    )
    r.add_argument("--profile", help="use this machine profile instead of the scenario's")
    r.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=bool(os.environ.get("CI")),
        help="print only verdicts (the default when $CI is set)",
    )
    r.add_argument(
        "--results",
        default=str(REPO / "results"),
        help="results root directory (default: results/ in the repository)",
    )
    r.add_argument(
        "--keep-disks",
        action="store_true",
        help="keep per-run disk images in the results directory",
    )
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check scenario files without running anything")
    v.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    v.add_argument("--profile", help="validate against this profile instead")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("doctor", help="report tools, KVM and the wgpu adapter")
    d.set_defaults(func=cmd_doctor)

    c = sub.add_parser("compare", help="replay a vGPU run against host-side executors")
    c.add_argument("run", metavar="RUN", help="results directory of the run (or its trace.jsonl)")
    c.add_argument(
        "--backend",
        action="append",
        choices=("wgpu", "numpy"),
        help="replay on this executor (default: wgpu and numpy)",
    )
    c.set_defaults(func=cmd_compare)

    t = sub.add_parser("test", help="run the test suite (pytest; extra arguments go to it)")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER)
    t.set_defaults(func=cmd_test)
    return p


def _terminate(signum, frame):
    # SIGTERM/SIGHUP end a run like Ctrl-C does: context managers stop QEMU, results
    # are written, the exit status is 130.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        return ns.func(ns)
    except ValidationError as e:
        for problem in e.problems:
            print(f"hil: {problem}\n", file=sys.stderr)
        n = len(e.problems)
        print(f"hil: {n} problem{'s' * (n != 1)} found; nothing was run.", file=sys.stderr)
        return EXIT_INVALID
    except HilError as e:
        print(f"hil: {e.kind} error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
