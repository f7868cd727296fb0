"""The `hil` command line.  Exit codes: docs/exit-codes.md (hil.errors holds the numbers)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import EXIT_INFRA, EXIT_INVALID, EXIT_PASS, HilError
from .paths import RESULTS, SCENARIOS, TESTS, rel
from .yamlsrc import ValidationError


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


def _load_all(paths: list[str], profile: str | list[str] | None):
    """Scenario files x profiles (a list: the matrix; None: each scenario's own) -> plans,
    made here once; the runs carry them as they are."""
    from .errors import UserError
    from .plan import make_plan
    from .scenario import load_scenario

    profiles = profile if isinstance(profile, list) else [profile]
    plans, problems = [], []
    # realpath, not Path.resolve(): a symlink loop must reach the loader's clear message.
    files = list(dict.fromkeys(Path(os.path.realpath(p)) for p in _scenario_files(paths)))
    for path in files:
        for prof in list(dict.fromkeys(profiles)) or [None]:
            try:
                # e.g. assembles the GPU program: its mistakes are input errors too
                plans.append(make_plan(load_scenario(path, prof)))
            except ValidationError as e:
                problems += [p for p in e.problems if p not in problems]
            except UserError as e:
                msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
                if msg not in problems:
                    problems.append(msg)
    seen: dict[tuple[str, str], Path] = {}
    for p in plans:
        path = p.scenario.path
        if p.key in seen and seen[p.key] != path:
            problems.append(
                f"{path}: the scenario name {p.name!r} is also the name of {seen[p.key]}. "
                "Runs are filed (results/<name>/, the history) and compared by name and "
                "profile, so give one of them another `name:`."
            )
        seen.setdefault(p.key, path)
    if problems:
        raise ValidationError(problems)
    return plans


def cmd_run(ns: argparse.Namespace) -> int:
    from .batch import Batch, BatchOptions, summary_lines
    from .progress import Progress
    from .runner import RunOptions
    from .verdict import EXIT_CODES

    plans = _load_all(ns.scenarios, ns.profile)
    opts = RunOptions(results_root=_results_root(ns.results), keep_disks=ns.keep_disks)
    mode = Progress.auto(quiet=ns.quiet).mode
    bopts = BatchOptions(
        jobs=ns.jobs,
        repeat=ns.repeat,
        retries=ns.retries,
        record_history=not ns.no_history,
        argv=["hil", *sys.argv[1:]],
    )
    result = Batch(plans, opts, bopts, mode).run()
    if len(result.groups) > 1 or ns.repeat > 1 or any(g.retries for g in result.groups):
        print("\n" + "\n".join(summary_lines(result)))
    return EXIT_CODES[result.outcome]


def cmd_nightly(ns: argparse.Namespace) -> int:
    from .batch import BatchOptions
    from .nightly import NightlyOptions, run_nightly
    from .progress import Progress
    from .runner import RunOptions

    plans = _load_all(ns.scenarios or [str(SCENARIOS)], ns.profile)
    opts = RunOptions(results_root=_results_root(ns.results), keep_disks=ns.keep_disks)
    bopts = BatchOptions(
        jobs=ns.jobs, repeat=ns.repeat, retries=ns.retries, argv=["hil", *sys.argv[1:]]
    )
    mode = Progress.auto(quiet=ns.quiet).mode
    nopts = NightlyOptions(nights=ns.nights, confirm=ns.confirm)
    return run_nightly(plans, opts, bopts, nopts, mode).exit_code


def cmd_history(ns: argparse.Namespace) -> int:
    from .history import FILENAME, History

    root = Path(ns.results).resolve()
    if not (root / FILENAME).exists():
        print(
            f"hil: no run history at {root / FILENAME} yet; `hil run` and `hil nightly` "
            "record every run there.",
            file=sys.stderr,
        )
        return EXIT_INVALID
    with History.at(root) as h:
        rows = h.recent(ns.scenario, ns.profile, limit=ns.limit)
        if not rows:
            known = h.scenarios()
            where = f" with profile {ns.profile}" if ns.profile else ""
            print(
                f"hil: no runs of {ns.scenario!r}{where} in {root / FILENAME}. Recorded "
                f"scenarios: {', '.join(known) or 'none yet (run `hil run` first)'}.",
                file=sys.stderr,
            )
            return EXIT_INVALID
    head = (
        "started (UTC)",
        "profile",
        "outcome",
        "boot_ms",
        "cpu_idle",
        "total_s",
        "commit",
        "batch",
        "run",
    )
    table = [head]
    for r in rows:
        m = r.metrics
        outcome = (
            r.outcome
            + (" (flaky)" if r.flaky else "")
            + (f" (try {r.attempt})" if r.attempt > 1 else "")
        )
        table.append(
            (
                r.started_at[:19].replace("T", " "),
                r.profile,
                outcome,
                f"{m['boot_ms']:.1f}" if "boot_ms" in m else "-",
                f"{m['cpu_idle'] * 100:.2f} %" if "cpu_idle" in m else "-",
                f"{r.total_s:.2f}" if r.total_s is not None else "-",
                (r.git_commit or "?")[:8],
                r.batch_id or "-",
                rel(r.run_dir),
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_PASS


def cmd_baseline(ns: argparse.Namespace) -> int:
    import datetime as dt

    from .history import FILENAME, History

    root = Path(ns.results).resolve()
    if not (root / FILENAME).exists():
        print(
            f"hil: no run history at {root / FILENAME} yet; nothing to pin or show.",
            file=sys.stderr,
        )
        return EXIT_INVALID
    with History.at(root) as h:
        if ns.action == "pin":
            run = h.run_by_dir_or_id(ns.run)
            if run is None or run.batch_id is None:
                print(
                    f"hil: {ns.run!r} is not a recorded run (give a run directory, e.g. "
                    "results/boot/20261121T030000Z-1a2b, or its unique id; `hil history "
                    "SCENARIO` lists them).",
                    file=sys.stderr,
                )
                return EXIT_INVALID
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            h.pin(run.scenario, run.profile, run.batch_id, now, ns.note or "")
            print(f"pinned: {run.scenario} [{run.profile}] compares with batch {run.batch_id}")
        elif ns.action == "unpin":
            n = h.unpin(ns.scenario, ns.profile)
            print(f"unpinned {n} baseline{'s' * (n != 1)}; the last passing nightly is used")
        else:
            pins = h.pins()
            if not pins:
                print("no pinned baselines: each key compares with its last passing nightly")
            for scenario, profile, batch, when, note in pins:
                print(f"{scenario} [{profile}] -> {batch} (pinned {when}) {note}".rstrip())
    return EXIT_PASS


def _results_root(arg: str) -> Path:
    """--results: a directory (made if missing), never an existing file."""
    root = Path(arg).resolve()
    if root.exists() and not root.is_dir():
        raise ValidationError(
            [
                f"--results {arg}: this is a file, not a directory. Give a directory for the "
                "results (it is created if missing)."
            ]
        )
    from . import qemuopt

    try:
        qemuopt.value(root)
    except qemuopt.UnsafeValue:
        raise ValidationError(
            [f"--results {arg!r}: a path with a newline cannot be handed to QEMU; rename it."]
        ) from None
    return root


def _positive_int(text: str, most: int = 10_000) -> int:
    try:
        n = int(text) if len(text) <= 12 else 0
    except ValueError:
        n = 0
    if not 1 <= n <= most:
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r} is not a whole number of at least 1 (and at most {most})"
        )
    return n


def _count(text: str, most: int = 1000) -> int:
    try:
        n = int(text) if len(text) <= 12 else -1
    except ValueError:
        n = -1
    if not 0 <= n <= most:
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r} is not a whole number of at least 0 (and at most {most})"
        )
    return n


def _batch_args(p: argparse.ArgumentParser, repeat: int = 1) -> None:
    p.add_argument(
        "--profile",
        action="append",
        help="run on this machine profile instead of the scenario's; give it several "
        "times for a matrix (every scenario on every profile)",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=1,
        help="runs at once, each in its own process and QEMU (default 1)",
    )
    p.add_argument(
        "--repeat",
        type=_positive_int,
        default=repeat,
        help="run each scenario/profile N times; metrics are reported as medians and spread "
        f"(default {repeat})",
    )
    p.add_argument(
        "--retries",
        type=_count,
        default=1,
        help="re-run a run that ended in an infrastructure error up to N times (default 1); "
        "test failures are never retried; a pass on retry is marked flaky",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=bool(os.environ.get("CI")),
        help="print only verdicts (the default when $CI is set)",
    )
    p.add_argument(
        "--results",
        default=str(RESULTS),
        help="results root directory (default: results/ in the repository)",
    )
    p.add_argument(
        "--keep-disks",
        action="store_true",
        help="keep per-run disk images in the results directory",
    )


def cmd_validate(ns: argparse.Namespace) -> int:
    for p in _load_all(ns.scenarios, ns.profile):
        n, d = len(p.scenario.steps), len(p.scenario.devices)
        print(
            f"ok  {p.scenario.path}: {n} step{'s' * (n != 1)}, profile {p.profile.name}, "
            f"{d} device{'s' * (d != 1)}"
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


def _restore_passthrough(quiet: bool) -> int:
    """Give back devices a killed hil left bound to vfio-pci (docs/passthrough.md)."""
    from .vfio.state import DEFAULT_REGISTRY

    if quiet and not any(Path(DEFAULT_REGISTRY).glob("*.json")):
        return EXIT_PASS  # the usual case: nothing was ever left bound
    from .vfio import RestoreError, restore_stale

    try:
        done = restore_stale()
    except RestoreError as e:
        for line in getattr(e, "restored", []):
            print(f"hil: {line}", file=sys.stderr)
        print(f"hil: passthrough: {e}", file=sys.stderr)
        return EXIT_INFRA
    except OSError as e:
        print(f"hil: passthrough: cannot read the registry of bound devices: {e}", file=sys.stderr)
        return EXIT_INFRA
    for line in done:
        print(f"hil: {line}", file=sys.stderr)
    if not done and not quiet:
        print("hil: no device was left bound by a hil that is gone")
    return EXIT_PASS


def cmd_vfio(ns: argparse.Namespace) -> int:
    if ns.action == "restore":
        return _restore_passthrough(quiet=False)
    from .vfio import doctor_report

    for line in doctor_report():
        print(line)
    return EXIT_PASS


def cmd_test(ns: argparse.Namespace) -> int:
    import pytest

    args = list(ns.pytest_args)
    # The whole suite unless the arguments name what to run (a file, a test id).
    named = any(Path(a.split("::")[0]).exists() for a in args if not a.startswith("-"))
    return int(pytest.main(args if named else [str(TESTS), *args]))


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
    _batch_args(r)
    r.add_argument(
        "--no-history",
        action="store_true",
        help="do not record these runs in the history database (results/history.sqlite)",
    )
    r.set_defaults(func=cmd_run)

    n = sub.add_parser(
        "nightly",
        help="run the suite, compare with the baseline, write results/nightly/<date>/",
        description="Run every scenario (default: scenarios/), record the runs, compare each "
        "scenario/profile with its previous run and baseline, and write summary.md, "
        "report.html, junit.xml and summary.json. Exit status: 0 no regression, 1 a "
        "regression, 3 an infrastructure error, 130 interrupted (docs/nightly.md).",
    )
    n.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="scenario files or directories (default: scenarios/)",
    )
    _batch_args(n, repeat=3)
    n.add_argument(
        "--nights",
        type=_positive_int,
        default=14,
        help="nights shown in the trend plots (default 14)",
    )
    n.add_argument(
        "--confirm",
        type=_count,
        default=5,
        metavar="N",
        help="re-run a pair whose metric looks regressed N more times, beside a pair that "
        "did not move, before reporting it (default 5; 0: report at once)",
    )
    n.set_defaults(func=cmd_nightly)

    h = sub.add_parser("history", help="recent runs of a scenario, from the history database")
    h.add_argument("scenario", metavar="SCENARIO", help="scenario name (its `name:`)")
    h.add_argument("--profile", help="only runs on this profile")
    h.add_argument(
        "-n",
        "--limit",
        type=_positive_int,
        default=20,
        help="how many runs, newest first (default 20)",
    )
    h.add_argument("--results", default=str(RESULTS), help="results root directory")
    h.set_defaults(func=cmd_history)

    b = sub.add_parser("baseline", help="pin or unpin the baseline a scenario compares with")
    b.add_argument("--results", default=str(RESULTS), help="results root directory")
    bsub = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    bp = bsub.add_parser("pin", help="compare this run's scenario/profile with its batch")
    bp.add_argument("run", metavar="RUN", help="a run directory or run id")
    bp.add_argument("--note", help="why (shown by `hil baseline show`)")
    bu = bsub.add_parser("unpin", help="back to the last passing nightly")
    bu.add_argument("scenario", metavar="SCENARIO")
    bu.add_argument("--profile", help="only this profile (default: all)")
    bsub.add_parser("show", help="list pinned baselines")
    b.set_defaults(func=cmd_baseline)

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

    # Every argument after `test` is pytest's, '-q' and '-k NAME' included: no option
    # prefix (and no -h) of our own, so argparse takes none of them for itself.
    vf = sub.add_parser(
        "vfio", help="passthrough devices: list them, restore what a killed hil left"
    )
    vsub = vf.add_subparsers(dest="action", required=True, metavar="ACTION")
    vsub.add_parser("restore", help="rebind devices a killed hil left on vfio-pci to their driver")
    vsub.add_parser("list", help="IOMMU groups and which devices can be passed through")
    vf.set_defaults(func=cmd_vfio)

    t = sub.add_parser(
        "test",
        help="run the test suite (pytest; every further argument goes to it)",
        prefix_chars="\0",
        add_help=False,
    )
    t.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="PYTEST_ARG")
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
        if ns.command in ("run", "nightly"):  # what killed runs left behind
            from .janitor import at_start

            at_start(Path(ns.results))
            _restore_passthrough(quiet=True)
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
    except BrokenPipeError:  # `hil ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())
