"""Scenario -> plan: every choice made, before anything is built or started.

The plan fixes the accelerator (and why), the CPU model, the image recipe (including the
GPU program's payload) and the device list; it is recorded in run.json so a result can
be reproduced.  Making a plan may raise UserError (a GPU program that does not
assemble): `hil run` makes every plan before it runs anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import host
from .devices import Device
from .image import ImageRecipe
from .profile import Profile
from .scenario import GpuOptions, Scenario


@dataclass(frozen=True)
class GpuPlan:
    options: GpuOptions
    vram: int
    program_sha256: str
    threads: int
    memory: int


@dataclass(frozen=True)
class Plan:
    scenario: Scenario
    profile: Profile
    accel: str
    accel_reason: str
    recipe: ImageRecipe
    devices: tuple[Device, ...]
    gpu: GpuPlan | None = None

    def to_json(self) -> dict:
        gpu = None
        if self.gpu:
            o = self.gpu.options
            gpu = {
                "program": str(o.program),
                "program_sha256": self.gpu.program_sha256,
                "backend": o.backend,
                "budget": o.budget,
                "threads": self.gpu.threads,
                "memory": self.gpu.memory,
                "vram": self.gpu.vram,
                "reference": o.reference,
            }
        return {
            "profile": self.profile.to_json(),
            "accel": self.accel,
            "accel_reason": self.accel_reason,
            "image_defines": dict(self.recipe.defines),
            "devices": [repr(d) for d in self.devices],
            "gpu": gpu,
        }


def make_plan(scenario: Scenario) -> Plan:
    profile = scenario.profile
    accel, why = host.choose_accel(profile.accel, profile.boot)
    defines: list[tuple[str, str]] = []
    if scenario.image.boot_fault:
        defines.append(("PXOS_BOOT_FAULT", "1"))
    if scenario.image.spin_idle:
        defines.append(("PXOS_SPIN_IDLE", "1"))
    payload, gpu = None, None
    if scenario.gpu is not None:
        from .vgpu import payload as pl

        program = pl.load_program(scenario.gpu.program)
        data = pl.encode(program, scenario.gpu.threads, scenario.gpu.memory)
        header = pl.decode_header(data)
        payload = pl.cached_payload(data)
        gpu = GpuPlan(
            scenario.gpu, profile.vram, program.sha256(), header["threads"], header["memory"]
        )
    return Plan(
        scenario=scenario,
        profile=profile,
        accel=accel,
        accel_reason=why,
        recipe=ImageRecipe(defines=tuple(defines), payload=payload),
        devices=scenario.devices,
        gpu=gpu,
    )
