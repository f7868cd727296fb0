"""Scenario files: parse and validate scenarios/*.yaml into plain data (docs/scenarios.md).

Nothing downstream reads YAML: the runner sees only the dataclasses below, and every
mistake a user can make is caught here, with the file, the line and the fix, before a
single tool runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import checks as chk
from . import devices as dev
from . import metrics
from .pattern import Pattern
from .profile import Profile, load_profile, resolve, unknown_profile_hint
from .steps import (
    COMMON,
    DEFAULT_TIMEOUT,
    STEPS,
    Check,
    Exit,
    Expect,
    Idle,
    Lines,
    Send,
    Step,
    StepContext,
    parse_pattern,
)
from .yamlsrc import Fields, LDict, Problems, ValidationError, load, suggest

__all__ = [
    "Check",
    "Exit",
    "Expect",
    "Idle",
    "Lines",
    "Limit",
    "Pattern",
    "PostCheck",
    "Scenario",
    "Send",
    "Step",
    "check_against",
    "load_scenario",
]

BASE_KEYS = (
    "name",
    "description",
    "profile",
    "timeout",
    "ready",
    "image",
    "devices",
    "checks",
    "fail_on",
    "infra_on",
    "default_fail_on",
    "steps",
    "metrics",
)
DEFAULT_FAIL_ON = ("!EXC", "!PANIC")  # docs/console.md: exception and panic reports
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# What the results root holds beside the run directories (docs/results.md).
RESERVED_NAMES = ("nightly", "README.md") + tuple(
    "history.sqlite" + x for x in ("", "-wal", "-shm", "-journal")
)


def top_keys() -> tuple[str, ...]:
    """Every top-level key: the base ones plus the sections device kinds own (gpu)."""
    return BASE_KEYS + tuple(k.section for k in dev.DEVICES.kinds() if k.section)


@dataclass(frozen=True)
class Limit:
    metric: str
    min: float | None
    max: float | None
    line: int | None


@dataclass(frozen=True)
class PostCheck:
    """A post-run check the scenario lists under ``checks:``."""

    kind: str
    spec: object
    line: int | None


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    profile: Profile
    timeout: float
    ready: Pattern
    image: object  # the image kind's spec (hil/images/kinds/): PxosImage by default
    devices: tuple  # the profile's devices, then the scenario's (device specs)
    fail_on: tuple[Pattern, ...]
    steps: tuple[Step, ...]
    limits: tuple[Limit, ...] = field(default_factory=tuple)
    sections: tuple = ()  # (device kind, spec) of the sections kinds own: ("vgpu", GpuOptions)
    checks: tuple[PostCheck, ...] = ()
    lines: dict = field(default_factory=dict)  # top-level key -> line, for later errors
    # Lines that say the test bench failed, not the system under test (a known bug of
    # QEMU's device model): the run ends as an infrastructure error, which is retried.
    infra_on: tuple[Pattern, ...] = ()
    image_kind: str = "pxos"

    @property
    def gpu(self):
        """The ``gpu:`` section (vGPU options), or None."""
        return next((spec for kind, spec in self.sections if kind == "vgpu"), None)

    @property
    def recorded(self) -> set[str]:
        return {n for s in self.steps for n in STEPS[s.kind].recorded(s)}


# ---------------------------------------------------------------- parsing


def load_scenario(path: Path, profile_override: str | None = None) -> Scenario:
    """Parse and validate one scenario file (and the profile it names, or the override);
    raises ValidationError listing every problem.  Nothing is planned or built here."""
    path = Path(path)
    problems = Problems(path)
    node = load(path, "scenario")
    f = Fields(problems, node, "", top_keys(), 1)
    if not f.ok:
        problems.raise_if_any()
    name = f.get("name", str, path.stem, example="name: boot")
    if name is not None and not NAME.fullmatch(name):
        f.error(
            "name",
            f"{name[:40]!r} cannot name a results directory; use 1 to 64 letters, digits, "
            "'-', '_' and '.', starting with a letter or digit.",
        )
    elif name.casefold() in {n.casefold() for n in RESERVED_NAMES}:
        f.error(
            "name",
            f"{name!r} is taken in the results root (results/{name} holds "
            f"{'the nightly reports' if name == 'nightly' else 'hil bookkeeping'}); "
            "choose another name.",
        )
    description = f.get("description", str, "")
    timeout = f.positive("timeout", 60.0, example="timeout: 60")
    if timeout is not None and timeout > 86400:
        f.error("timeout", "must be at most 86400 s (a day).")
        timeout = None
    ready_node = f.raw("ready")

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

    image_kind, image = _image(problems, f.raw("image"), f.line_of("image"), path.parent)
    sections = []
    for kind in dev.DEVICES.kinds():
        if kind.section and f.has(kind.section):
            g = Fields(
                problems,
                f.raw(kind.section),
                kind.section,
                kind.section_keys,
                f.line_of(kind.section),
            )
            if g.ok:
                spec = kind.parse_section(g, dev.ParseContext(problems, path.parent))
                g.done()
                if spec is not None and g.ok:
                    sections.append((kind.name, spec))
    devices = dev.parse(problems, f.raw("devices"), "devices", path.parent)
    post = _checks(problems, f.raw("checks"), f.line_of("checks"), path.parent)

    fail_on = list(DEFAULT_FAIL_ON) if f.get("default_fail_on", bool, True) else []
    fail_on = [Pattern(t) for t in fail_on]
    extra = f.get("fail_on", list, [], example="fail_on: ['PANIC']")
    for i, p in enumerate(extra or []):
        line = extra.lines[i] if hasattr(extra, "lines") else None
        pat = parse_pattern(problems, p, f"fail_on[{i}]", line)
        if pat:
            fail_on.append(pat)

    ready = None
    if ready_node is not None:
        ready = parse_pattern(problems, ready_node, "ready", f.line_of("ready"))
    elif image is not None:
        from .images.kinds import IMAGES

        default = IMAGES[image_kind].default_ready
        if default is None:
            f.error(
                "image",
                f"a {image_kind!r} image prints no line hil knows as the end of boot: add "
                "'ready:' with the line your kernel prints when it is up (boot_ms is "
                "measured to it).",
            )
        else:
            ready = Pattern(default, regex=default.startswith("^"))
    infra_on = []
    extra = f.get("infra_on", list, [], example="infra_on: ['QEMU bug line']")
    for i, p in enumerate(extra or []):
        pat = parse_pattern(problems, p, f"infra_on[{i}]", extra.lines[i])
        if pat:
            infra_on.append(pat)
    steps = _steps(
        problems, f.get("steps", list, example="steps: [{expect: '@stage ready'}]"), path.parent
    )
    recorded = {n for s in steps for n in STEPS[s.kind].recorded(s)}
    limits = _limits(problems, f.raw("metrics"), f.line_of("metrics"), recorded)
    f.done()
    sc = None
    if not problems.items:
        sc = Scenario(
            name=name,
            path=path,
            description=description,
            profile=profile,
            timeout=timeout,
            ready=ready,
            image=image,
            devices=tuple(profile.devices) + tuple(devices),
            fail_on=tuple(fail_on),
            steps=tuple(steps),
            limits=tuple(limits),
            sections=tuple(sections),
            checks=tuple(post),
            lines=dict(getattr(node, "lines", {})),
            image_kind=image_kind,
            infra_on=tuple(infra_on),
        )
        problems.items += check_against(sc, profile)
    problems.raise_if_any()
    return sc


def check_against(sc: Scenario, profile: Profile) -> list[str]:
    """What the scenario asks that the profile cannot give (file:line problems)."""
    problems = Problems(sc.path)
    for kind_name, spec in sc.sections:
        kind = dev.DEVICES[kind_name]
        line = sc.lines.get(kind.section)
        kind.check(spec, profile, lambda msg, k=kind, ln=line: problems.add(ln, k.section, msg))
    if profile.machine == "pc":
        for i, d in enumerate(sc.devices[len(profile.devices) :]):
            if d.behind_root_port:
                problems.add(
                    sc.lines.get("devices"),
                    f"devices[{i}]",
                    "behind_root_port needs a PCIe machine (profile machine: q35).",
                )
    return problems.items


def _image(problems: Problems, node, line, base_dir: Path) -> tuple[str, object | None]:
    """``image:`` -> (kind, its spec); no ``kind`` key means pxos (hil/images/kinds/)."""
    from .images.kinds import IMAGES

    if node is None:
        return "pxos", IMAGES["pxos"].parse(Fields(problems, _empty(line), "image", ()), None)
    kind_name = node.get("kind", "pxos") if isinstance(node, dict) else "pxos"
    kind = IMAGES.get(kind_name)
    if kind is None:
        problems.add(
            getattr(node, "lines", {}).get("kind", line), "image.kind", IMAGES.unknown(kind_name)
        )
        return "pxos", None
    f = Fields(problems, node, "image", ("kind", *kind.keys), line)
    if not f.ok:
        return kind_name, None
    spec = kind.parse(f, dev.ParseContext(problems, base_dir))
    f.done()
    return kind_name, spec if f.ok else None


def _empty(line) -> LDict:
    d = LDict()
    d.line, d.lines = line, {}
    return d


def _checks(problems: Problems, node, line, base_dir: Path) -> list[PostCheck]:
    """``checks: [{disk: {...}}, ...]``: post-run check kinds (hil/checks/)."""
    if node is None:
        return []
    names = chk.post_names()
    if not isinstance(node, list):
        problems.add(line, "checks", "expected a list of checks, e.g. '- disk: {device: nvme0}'.")
        return []
    out = []
    for i, item in enumerate(node):
        here, at = f"checks[{i}]", node.lines[i]
        if not isinstance(item, dict) or len(item) != 1:
            problems.add(
                at, here, f"each check is a one-key mapping naming its kind ({', '.join(names)})."
            )
            continue
        ((name, body),) = item.items()
        if name not in names:
            problems.add(at, here, chk.CHECKS.unknown(name, names))
            continue
        kind = chk.CHECKS[name]
        if body is None:
            body = LDict()
            body.line, body.lines = at, {}
        f = Fields(problems, body, f"{here}.{name}", kind.keys, at)
        if f.ok:
            spec = kind.parse(f, dev.ParseContext(problems, base_dir))
            f.done()
            if spec is not None and f.ok:
                out.append(PostCheck(name, spec, at))
    return out


def _steps(problems: Problems, node, base_dir: Path) -> list[Step]:
    out: list[Step] = []
    if node is None:
        return out
    kinds = STEPS.names()
    if not node:
        problems.add(
            node.line,
            "steps",
            "no steps: a scenario must check something. Add e.g. '- expect: \"@stage ready\"'.",
        )
    ctx = StepContext(problems, base_dir)
    for i, item in enumerate(node):
        line = node.lines[i]
        where = f"steps[{i}]"
        if not isinstance(item, dict):
            problems.add(
                line,
                where,
                f"a step is a mapping with one of {', '.join(kinds)}"
                " (e.g. '- expect: \"@stage ready\"').",
            )
            continue
        named = [k for k in item if k in STEPS]
        if len(named) != 1:
            unknown = [k for k in item if k not in STEPS and k not in COMMON]
            hint = suggest(str(unknown[0]), kinds) if unknown else ""
            what = "several kinds: " + ", ".join(named) if named else "no kind"
            problems.add(
                line,
                where,
                f"this step has {what}{hint}; each step has exactly one of {', '.join(kinds)}.",
            )
            continue
        kind = STEPS[named[0]]
        f = Fields(problems, item, where, (kind.name, *COMMON, *kind.keys), line)
        timeout = f.positive("timeout", DEFAULT_TIMEOUT)
        if timeout is not None and timeout > 86400:
            f.error("timeout", "must be at most 86400 s (a day).")
            timeout = None
        common = dict(index=i, line=line, name=f.get("name", str, ""), timeout=timeout)
        step = kind.parse(f, common, ctx)
        f.done()
        if step is not None and common["timeout"] is not None:
            out.append(step)
    return out


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
                f"unknown metric {str(name)[:60]!r}{suggest(str(name), known)}. Known: "
                f"{', '.join(metrics.names())}, and names recorded by steps' 'record'.",
            )
            continue
        g = Fields(problems, f.node[name], where, ["min", "max"], f.line_of(name))
        lo, hi = g.get("min", float, None), g.get("max", float, None)
        g.done()
        if any(v is not None and not math.isfinite(v) for v in (lo, hi)):
            g.error(None, "min and max must be finite numbers (not .nan or .inf).")
        elif g.ok and lo is None and hi is None:
            g.error(None, "give 'min', 'max' or both, e.g. '{max: 150}'.")
        elif lo is not None and hi is not None and lo > hi:
            g.error(None, f"min ({lo}) is above max ({hi}); no value can pass.")
        elif g.ok:
            out.append(Limit(name, lo, hi, f.line_of(name)))
    return out
