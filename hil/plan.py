"""Scenario -> plan: every choice made, before anything is built or started.

The plan fixes the accelerator (and why), the CPU model, the image recipe and the device
list; it is recorded verbatim in run.json so a result can be reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import host
from .devices import Device
from .image import ImageRecipe
from .profile import Profile
from .scenario import Scenario


@dataclass(frozen=True)
class Plan:
    scenario: Scenario
    profile: Profile
    accel: str
    accel_reason: str
    recipe: ImageRecipe
    devices: tuple[Device, ...]

    def to_json(self) -> dict:
        return {
            "profile": self.profile.to_json(),
            "accel": self.accel,
            "accel_reason": self.accel_reason,
            "image_defines": dict(self.recipe.defines),
            "devices": [repr(d) for d in self.devices],
        }


def make_plan(scenario: Scenario) -> Plan:
    profile = scenario.profile
    accel, why = host.choose_accel(profile.accel, profile.boot)
    defines: list[tuple[str, str]] = []
    if scenario.image.boot_fault:
        defines.append(("PXOS_BOOT_FAULT", "1"))
    return Plan(
        scenario=scenario,
        profile=profile,
        accel=accel,
        accel_reason=why,
        recipe=ImageRecipe(defines=tuple(defines)),
        devices=scenario.devices,
    )
