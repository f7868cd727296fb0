"""What every device kind is: the interface, the contexts it gets, and the PCI identity.

A device kind (one file in hil/devices/) owns everything about that kind of device:

* ``keys`` and ``parse``: its YAML form under ``devices: - <name>: {...}`` (in a profile
  or a scenario), validated with file:line errors; a kind may also own a top-level
  scenario section (``section``: the vGPU owns ``gpu:``) and profile keys;
* ``plan``: choices made once, before anything runs (the vGPU assembles its program);
* ``attach``: its QEMU arguments and the per-run files it creates (disks, pcaps);
* ``helper``: a process started before QEMU and stopped after it (the vGPU bridge);
* ``pci_ids``: the PCI functions it puts on the bus;
* ``after``: what it collects once the machine has stopped (metrics, artifacts, problems)
  and ``checks``: the post-run checks it asks for (hil/checks/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..yamlsrc import Fields, Problems


@dataclass(frozen=True)
class PciId:
    vendor: int
    device: int
    class_code: int  # 24-bit: base class, subclass, prog-if

    def __str__(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x} {self.class_code:06x}"


@dataclass(frozen=True)
class ParseContext:
    problems: Problems
    base_dir: Path  # relative paths in the file resolve here
    source: str = "scenario"  # scenario | profile


@dataclass
class AttachContext:
    """Collects one machine's device arguments and per-run files."""

    run_dir: Path
    args: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # artifact name -> path
    name: str = ""  # this device's instance name: nvme0, nic1, ...
    bus: str = ""  # ",bus=<root port>" when behind one, else ""
    helper: Any = None  # this device's started helper process, if it has one

    def add(self, *args: str) -> None:
        self.args += args

    def once(self, *args: str) -> None:
        """Arguments the machine needs once, however many devices ask (a -trace)."""
        if not any(self.args[i : i + len(args)] == list(args) for i in range(len(self.args))):
            self.args += args

    def file(self, suffix: str, filename: str) -> Path:
        """A per-run file of this device, recorded as artifact ``<name>.<suffix>``."""
        path = self.run_dir / filename
        self.files[f"{self.name}.{suffix}"] = path
        return path


@dataclass
class Finding:
    """What a device or check found after the run (hil.judge turns findings into the verdict).

    outcome: pass | fail | error (an infrastructure problem) | info (a note added to a
    verdict that did not pass, e.g. where the GPU threads were at a timeout)."""

    source: str  # the device or check that found it
    outcome: str
    reason: str
    category: str = ""
    line: int | None = None  # scenario line of the check
    evidence: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # for run.json's "checks"


@dataclass
class AfterContext:
    """What a device kind or post-run check sees once the machine has stopped."""

    plan: Any  # hil.plan.Plan
    run_dir: Path
    lines: list  # console Lines
    outcome: str  # the steps' outcome (pass, fail, timeout, ...)
    helper: Any = None  # the device's helper process, if it had one
    metrics: dict = field(default_factory=dict)  # to add to the run's metrics
    artifacts: dict = field(default_factory=dict)  # name -> file name in run_dir
    sections: dict = field(default_factory=dict)  # top-level run.json sections (e.g. "gpu")


class DeviceKind:
    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]] = ()  # keys of its mapping (behind_root_port is added)
    section: ClassVar[str | None] = None  # a top-level scenario key it owns
    section_keys: ClassVar[tuple[str, ...]] = ()  # the keys of that section
    profile_keys: ClassVar[tuple[str, ...]] = ()  # profile keys it owns
    spec: ClassVar[type]  # the frozen dataclass ``parse`` returns
    metrics: ClassVar[dict[str, str]] = {}  # metric name -> meaning, for what ``after`` adds

    def parse(self, f: Fields, ctx: ParseContext) -> Any | None:
        raise NotImplementedError

    def parse_section(self, f: Fields, ctx: ParseContext) -> Any | None:
        raise NotImplementedError

    def parse_profile(self, f: Fields, ctx: ParseContext) -> dict:
        """Profile settings (key -> value) this kind owns; kept in Profile.settings."""
        return {}

    def check(self, spec: Any, profile: Any, problem: Callable[[str], None]) -> None:
        """Cross-checks against the profile, at plan time (``problem(msg)`` reports one)."""

    def plan(self, spec: Any, profile: Any) -> Any:
        """The spec with every choice made (may raise UserError)."""
        return spec

    def payload(self, spec: Any) -> Path | None:
        """A file the boot image must carry for this device (the vGPU's program)."""
        return None

    def pci_ids(self, spec: Any) -> list[PciId]:
        return []

    def attach(self, spec: Any, ctx: AttachContext) -> None:
        raise NotImplementedError

    def helper(self, spec: Any, run_dir: Path):
        """A Lifetime started before QEMU (its ``qemu_args()`` join the command line) and
        stopped after it; ``check()`` raises InfraError if it died meanwhile."""
        return None

    def after(self, spec: Any, ctx: AfterContext) -> list[Finding]:
        return []

    def checks(self, spec: Any) -> list[tuple[str, Any]]:
        """Post-run checks (name, parsed spec) this device asks for."""
        return []

    def describe(self, spec: Any) -> str:
        return repr(spec)
