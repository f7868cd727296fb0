"""Scenario files: parse and validate scenarios/*.yaml into plain data (docs/scenarios.md).

Nothing downstream reads YAML: the runner sees only the dataclasses below, and every
mistake a user can make is caught here, with the file, the line and the fix, before a
single tool runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import devices as dev
from . import metrics
from .pattern import Pattern, PatternError, compile_regex
from .profile import Profile, load_profile, resolve, unknown_profile_hint
from .yamlsrc import Fields, Problems, ValidationError, excerpt, load, parse_size, suggest

TOP_KEYS = (
    "name",
    "description",
    "profile",
    "timeout",
    "ready",
    "image",
    "gpu",
    "devices",
    "fail_on",
    "default_fail_on",
    "steps",
    "metrics",
)
STEP_KINDS = ("expect", "lines", "send", "idle", "exit", "check")
STEP_COMMON = ("name", "timeout")
STEP_EXTRA = {"expect": ("record",), "lines": ("ordered",)}
RECORD_TYPES = {
    "int": lambda s: int(s, 10),
    "hex": lambda s: int(s, 16),
    "float": float,
    "str": str,
}
EXIT_NAMES = {"shutdown": 1, "panic": 63}  # docs/console.md, "Exit codes"
CHECKS = ("pci",)
IMAGE_KEYS = ("boot_fault", "spin_idle")
GPU_KEYS = ("program", "backend", "budget", "threads", "memory", "reference")
GPU_BACKENDS = ("wgpu", "numpy")
REFERENCES = ("none", "wgpu")
DEFAULT_FAIL_ON = ("!EXC", "!PANIC")  # docs/console.md: exception and panic reports
DEFAULT_READY = "@stage ready"
DEFAULT_STEP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Step:
    index: int  # 0-based position in steps
    line: int | None  # line in the scenario file
    name: str
    timeout: float

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    def label(self) -> str:
        return f"step {self.index + 1} ({self.name})" if self.name else f"step {self.index + 1}"


@dataclass(frozen=True)
class Expect(Step):
    pattern: Pattern
    record: tuple[tuple[str, str], ...] = ()  # (regex group, type)


@dataclass(frozen=True)
class Lines(Step):
    patterns: tuple[Pattern, ...]
    ordered: bool = True


@dataclass(frozen=True)
class Send(Step):
    text: str


@dataclass(frozen=True)
class Idle(Step):
    seconds: float


@dataclass(frozen=True)
class Exit(Step):
    status: int


@dataclass(frozen=True)
class Check(Step):
    what: str


@dataclass(frozen=True)
class Limit:
    metric: str
    min: float | None
    max: float | None
    line: int | None


@dataclass(frozen=True)
class ImageOptions:
    boot_fault: bool = False
    spin_idle: bool = False  # idle() busy-waits instead of hlt: cpu_idle's negative control


@dataclass(frozen=True)
class GpuOptions:
    """What the virtual GPU runs (docs/vgpu.md); needs a profile with gpu: virtual."""

    program: Path
    backend: str = "wgpu"
    budget: int = 100_000  # steps per thread per executor run
    threads: int | None = None  # override the program's own
    memory: int | None = None
    reference: str = "none"  # wgpu: replay the trace through wgpu and NumPy afterwards


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    profile: Profile
    timeout: float
    ready: Pattern
    image: ImageOptions
    gpu: GpuOptions | None
    devices: tuple[dev.Device, ...]
    fail_on: tuple[Pattern, ...]
    steps: tuple[Step, ...]
    limits: tuple[Limit, ...] = field(default_factory=tuple)

    @property
    def recorded(self) -> set[str]:
        return {name for s in self.steps if isinstance(s, Expect) for name, _ in s.record}


# ---------------------------------------------------------------- parsing


def load_scenario(path: Path, profile_override: str | None = None) -> Scenario:
    """Parse and validate one scenario file; raises ValidationError listing every problem."""
    path = Path(path)
    problems = Problems(path)
    node = load(path, "scenario")
    f = Fields(problems, node, "", TOP_KEYS, 1)
    if not f.ok:
        problems.raise_if_any()
    name = f.get("name", str, path.stem, example="name: boot")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        f.error(
            "name",
            f"{name!r} cannot name a results directory; use letters, digits, '-', '_' and '.'.",
        )
    description = f.get("description", str, "")
    timeout = f.positive("timeout", 60.0, example="timeout: 60")
    ready = _pattern(problems, f.raw("ready", DEFAULT_READY), "ready", f.line_of("ready"))

    profile = None
    ref = profile_override or f.get("profile", str, example="profile: q35-tcg-bios")
    if ref is not None:
        ppath = resolve(ref, path.parent)
        if ppath is None:
            where = "--profile" if profile_override else "profile"
            problems.add(
                None if profile_override else f.line_of("profile"), where, unknown_profile_hint(ref)
            )
        else:
            try:
                profile = load_profile(ppath)
            except ValidationError as e:
                problems.items.extend(e.problems)

    image = _image(problems, f.raw("image"), f.line_of("image"))
    gpu = _gpu(problems, f.raw("gpu"), f.line_of("gpu"), path.parent)
    if gpu is not None and profile is not None and profile.gpu != "virtual":
        problems.add(
            f.line_of("gpu"),
            "gpu",
            f"profile {profile.name!r} has no virtual GPU "
            "(gpu: none); pick a profile with 'gpu: virtual', e.g. q35-tcg-vgpu.",
        )
    devices = dev.parse(problems, f.raw("devices"), "devices", path.parent)
    if profile is not None and profile.machine == "pc":
        for i, d in enumerate(devices):
            if d.behind_root_port:
                problems.add(
                    f.line_of("devices"),
                    f"devices[{i}]",
                    "behind_root_port needs a PCIe machine (profile machine: q35).",
                )

    fail_on = list(DEFAULT_FAIL_ON) if f.get("default_fail_on", bool, True) else []
    fail_on = [Pattern(t) for t in fail_on]
    extra = f.get("fail_on", list, [], example="fail_on: ['PANIC']")
    for i, p in enumerate(extra or []):
        line = extra.lines[i] if hasattr(extra, "lines") else None
        pat = _pattern(problems, p, f"fail_on[{i}]", line)
        if pat:
            fail_on.append(pat)

    steps = _steps(problems, f.get("steps", list, example="steps: [{expect: '@stage ready'}]"))
    recorded = {n for s in steps if isinstance(s, Expect) for n, _ in s.record}
    limits = _limits(problems, f.raw("metrics"), f.line_of("metrics"), recorded)
    f.done()
    problems.raise_if_any()
    return Scenario(
        name=name,
        path=path,
        description=description,
        profile=profile,
        timeout=timeout,
        ready=ready,
        image=image,
        gpu=gpu,
        devices=tuple(profile.devices) + tuple(devices),
        fail_on=tuple(fail_on),
        steps=tuple(steps),
        limits=tuple(limits),
    )


def _pattern(problems: Problems, node, where: str, line) -> Pattern | None:
    """'text' -> substring; {regex: '...'} -> regex (compiled now, so errors show here)."""
    if isinstance(node, str):
        if not node:
            problems.add(
                line, where, "an empty pattern matches every line; write the text to look for."
            )
            return None
        return Pattern(node)
    if isinstance(node, dict):
        f = Fields(problems, node, where, ["regex"], line)
        text = f.get("regex", str, example=r"regex: 'pci 00:0\d\.0'")
        f.done()
        if text is None:
            return None
        try:
            compile_regex(text)
        except PatternError as e:
            problems.add(
                f.line_of("regex"),
                f"{where}.regex",
                f"invalid regular expression {excerpt(text)}: {e}. Fix the regex (escape "
                "literal '.', '(', '[' and '+' with a backslash; the dialect is RE2, "
                "docs/scenarios.md).",
            )
            return None
        return Pattern(text, regex=True)
    problems.add(
        line,
        where,
        "a pattern is a string (a literal substring of a console "
        "line) or {regex: '...'} (an RE2 regular expression searched in a line).",
    )
    return None


def _image(problems: Problems, node, line) -> ImageOptions:
    if node is None:
        return ImageOptions()
    f = Fields(problems, node, "image", IMAGE_KEYS, line)
    boot_fault = f.get("boot_fault", bool, False)
    spin_idle = f.get("spin_idle", bool, False)
    f.done()
    return ImageOptions(boot_fault=bool(boot_fault), spin_idle=bool(spin_idle))


def _gpu(problems: Problems, node, line, base_dir: Path) -> GpuOptions | None:
    if node is None:
        return None
    f = Fields(problems, node, "gpu", GPU_KEYS, line)
    program = f.get("program", str, example="program: ../pxi/programs/hello.pxs")
    backend = f.choice("backend", GPU_BACKENDS, "wgpu")
    budget = f.get("budget", int, 100_000, example="budget: 100000")
    if budget is not None and not 1 <= budget <= (1 << 32) - 1:
        f.error("budget", "must be between 1 and 4294967295 steps.")
    threads = f.get("threads", int, None, example="threads: 4")
    if threads is not None and not 1 <= threads <= 1 << 20:
        f.error("threads", "must be between 1 and 1048576.")
    mem_raw = f.raw("memory")
    memory = None
    if mem_raw is not None:
        memory = parse_size(mem_raw)
        if memory is None or memory % 4:
            f.error(
                "memory",
                f"{mem_raw!r} is not a data memory size (a multiple of 4 bytes, e.g. 64K).",
            )
    reference = f.choice("reference", REFERENCES, "none")
    f.done()
    if not f.ok or program is None:
        return None
    path = (base_dir / program).resolve()
    if not path.is_file():
        f.error("program", f"{path} does not exist. Fix the path (relative to the scenario).")
        return None
    if path.suffix not in (".pxs", ".png"):
        f.error("program", f"{path.name}: a GPU program is a .pxs source or a .png image.")
        return None
    return GpuOptions(
        program=path,
        backend=backend or "wgpu",
        budget=budget or 100_000,
        threads=threads,
        memory=memory,
        reference=reference or "none",
    )


def _steps(problems: Problems, node) -> list[Step]:
    out: list[Step] = []
    if node is None:
        return out
    if not node:
        problems.add(
            node.line,
            "steps",
            "no steps: a scenario must check something. Add e.g. '- expect: \"@stage ready\"'.",
        )
    for i, item in enumerate(node):
        line = node.lines[i]
        where = f"steps[{i}]"
        if not isinstance(item, dict):
            problems.add(
                line,
                where,
                f"a step is a mapping with one of {', '.join(STEP_KINDS)}"
                " (e.g. '- expect: \"@stage ready\"').",
            )
            continue
        kinds = [k for k in item if k in STEP_KINDS]
        if len(kinds) != 1:
            unknown = [k for k in item if k not in STEP_KINDS and k not in STEP_COMMON]
            hint = suggest(unknown[0], STEP_KINDS) if unknown else ""
            what = "several kinds: " + ", ".join(kinds) if kinds else "no kind"
            problems.add(
                line,
                where,
                f"this step has {what}{hint}; each step has exactly one "
                f"of {', '.join(STEP_KINDS)}.",
            )
            continue
        kind = kinds[0]
        f = Fields(problems, item, where, (kind, *STEP_COMMON, *STEP_EXTRA.get(kind, ())), line)
        common = dict(
            index=i,
            line=line,
            name=f.get("name", str, ""),
            timeout=f.positive("timeout", DEFAULT_STEP_TIMEOUT),
        )
        step = _STEP_PARSERS[kind](problems, f, common)
        f.done()
        if step is not None and common["timeout"] is not None:
            out.append(step)
    return out


def _expect(problems: Problems, f: Fields, common) -> Step | None:
    pat = _pattern(problems, f.raw("expect"), f.path("expect"), f.line_of("expect"))
    record = f.get("record", dict, {}, example="record: {busy: hex}")
    pairs = []
    for group, typ in (record or {}).items():
        if not isinstance(typ, str) or typ not in RECORD_TYPES:
            f.error(
                "record",
                f"type {typ!r} for {group!r} is not one of "
                f"{', '.join(RECORD_TYPES)}{suggest(str(typ), RECORD_TYPES)}.",
            )
            continue
        if pat is None:
            continue
        if not pat.regex or group not in pat.compiled.groupindex:
            f.error(
                "record",
                f"{group!r} is not a named group of the pattern; write the "
                f"pattern as {{regex: '...(?P<{group}>...)...'}}.",
            )
            continue
        pairs.append((group, typ))
    return Expect(**common, pattern=pat, record=tuple(pairs)) if pat else None


def _lines(problems: Problems, f: Fields, common) -> Step | None:
    items = f.get("lines", list, example="lines: ['first', 'second']")
    ordered = f.get("ordered", bool, True)
    if items is None:
        return None
    if not items:
        f.error("lines", "an empty list checks nothing; list the lines to wait for.")
        return None
    pats = [
        _pattern(problems, p, f"{f.path('lines')}[{j}]", items.lines[j])
        for j, p in enumerate(items)
    ]
    if None in pats:
        return None
    return Lines(**common, patterns=tuple(pats), ordered=ordered)


def _send(problems: Problems, f: Fields, common) -> Step | None:
    text = f.get("send", str, example="send: stats")
    if text is not None and ("\n" in text or "\r" in text):
        f.error("send", "send one line at a time (the newline is added); use several steps.")
        return None
    return Send(**common, text=text) if text is not None else None


def _idle(problems: Problems, f: Fields, common) -> Step | None:
    seconds = f.positive("idle", example="idle: 1.0")
    if seconds is None:
        return None
    # The window itself must fit into the step's time.
    timeout = max(common["timeout"] or 0, seconds + 5.0)
    return Idle(**{**common, "timeout": timeout}, seconds=seconds)


def _exit(problems: Problems, f: Fields, common) -> Step | None:
    raw = f.raw("exit")
    if isinstance(raw, str) and raw in EXIT_NAMES:
        return Exit(**common, status=EXIT_NAMES[raw])
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 255:
        return Exit(**common, status=raw)
    f.error(
        "exit",
        f"{raw!r} is not an exit status; write a QEMU exit status (0-255) or one "
        f"of {', '.join(EXIT_NAMES)} (docs/console.md).",
    )
    return None


def _check(problems: Problems, f: Fields, common) -> Step | None:
    what = f.choice("check", CHECKS)
    return Check(**common, what=what) if what else None


_STEP_PARSERS = {
    "expect": _expect,
    "lines": _lines,
    "send": _send,
    "idle": _idle,
    "exit": _exit,
    "check": _check,
}


def _limits(problems: Problems, node, line, recorded: set[str]) -> list[Limit]:
    if node is None:
        return []
    f = Fields(problems, node, "metrics", list(node) if isinstance(node, dict) else [], line)
    out = []
    for name in f.node:
        where = f"metrics.{name}"
        if not metrics.is_known(name) and name not in recorded:
            known = metrics.names() + sorted(recorded)
            f.error(
                name,
                f"unknown metric {name!r}{suggest(name, known)}. Known: "
                f"{', '.join(metrics.names())}, and names recorded by steps' 'record'.",
            )
            continue
        g = Fields(problems, f.node[name], where, ["min", "max"], f.line_of(name))
        lo, hi = g.get("min", float, None), g.get("max", float, None)
        g.done()
        if g.ok and lo is None and hi is None:
            g.error(None, "give 'min', 'max' or both, e.g. '{max: 150}'.")
        elif lo is not None and hi is not None and lo > hi:
            g.error(None, f"min ({lo}) is above max ({hi}); no value can pass.")
        elif g.ok:
            out.append(Limit(name, lo, hi, f.line_of(name)))
    return out
