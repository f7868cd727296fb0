"""Scenario -> plan: every choice made, before anything is built or started.

The plan fixes the accelerator (and why), the image recipe (including the payloads
devices ask for: the vGPU's program), the planned devices (the profile's, the
scenario's, and those its sections describe) and the post-run checks.  It is made once
-- by ``hil run`` before anything runs, so a GPU program that does not assemble is
invalid input -- and carried as it is into the run's process; a profile matrix is a
list of plans.  It is recorded in run.json so a result can be reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import host
from .devices import DEVICES, Vgpu, kind_of
from .errors import UserError
from .image import ImageRecipe
from .profile import Profile
from .scenario import PostCheck, Scenario, check_against
from .yamlsrc import ValidationError


@dataclass(frozen=True)
class Plan:
    scenario: Scenario
    profile: Profile
    accel: str
    accel_reason: str
    recipe: ImageRecipe
    devices: tuple  # planned device specs, in attach order
    checks: tuple[PostCheck, ...] = ()  # post-run checks: the devices' and the scenario's

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def key(self) -> tuple[str, str]:
        """(scenario, profile): how runs are grouped and compared."""
        return (self.scenario.name, self.profile.name)

    @property
    def gpu(self) -> Vgpu | None:
        return next((d for d in self.devices if d.kind == "vgpu"), None)

    def to_json(self) -> dict:
        gpu = self.gpu
        return {
            "profile": self.profile.to_json(),
            "accel": self.accel,
            "accel_reason": self.accel_reason,
            "image_defines": dict(self.recipe.defines),
            "devices": [kind_of(d).describe(d) for d in self.devices if d.kind != "vgpu"],
            "gpu": DEVICES["vgpu"].to_json(gpu) if gpu else None,
        }


def make_plan(scenario: Scenario, profile: Profile | None = None) -> Plan:
    """The plan of ``scenario`` on its own profile or on ``profile`` (a matrix entry).
    Raises ValidationError / UserError for what only planning finds out."""
    if profile is not None and profile != scenario.profile:
        if problems := check_against(scenario, profile):
            raise ValidationError(problems)
        devices = tuple(profile.devices) + scenario.devices[len(scenario.profile.devices) :]
    else:
        profile, devices = scenario.profile, scenario.devices
    if (ram := host.memory_bytes()) and profile.memory_mib << 20 > ram:
        raise ValidationError(
            [
                f"{profile.path}: memory: {profile.memory_mib} MiB is more than this host has "
                f"({ram >> 20} MiB); QEMU could not allocate it. Give the profile less memory."
            ]
        )
    accel, why = host.choose_accel(profile.accel, profile.boot)
    defines: list[tuple[str, str]] = []
    if scenario.image.boot_fault:
        defines.append(("PXOS_BOOT_FAULT", "1"))
    if scenario.image.spin_idle:
        defines.append(("PXOS_SPIN_IDLE", "1"))
    planned = []
    owners = [(kind_of(d), d) for d in devices] + [(DEVICES[n], s) for n, s in scenario.sections]
    for kind, spec in owners:
        try:
            planned.append(kind.plan(spec, profile))
        except UserError as e:
            raise UserError(f"{scenario.path}: {e}") from None
    payloads = [p for d in planned if (p := kind_of(d).payload(d)) is not None]
    if len(payloads) > 1:
        raise UserError(f"{scenario.path}: more than one device asks for a boot payload")
    checks = [PostCheck(name, spec, None) for d in planned for name, spec in kind_of(d).checks(d)]
    return Plan(
        scenario=scenario,
        profile=profile,
        accel=accel,
        accel_reason=why,
        recipe=ImageRecipe(defines=tuple(defines), payload=payloads[0] if payloads else None),
        devices=tuple(planned),
        checks=tuple(checks) + scenario.checks,
    )
