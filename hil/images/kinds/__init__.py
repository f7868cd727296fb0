"""Image kinds: what a scenario boots, found by name like device, step and check kinds.

    image: {kind: pxos, boot_fault: false}        # the default: pxOS built from source
    image: {kind: kernel, kernel: bzImage, initrd: x.cpio.gz, append: "..."}
    image: {kind: linux, packages: [fio], modules: [nvme], init: "fio ..."}

An image kind owns its keys (parse), what only planning can check (plan), the build
(build -> Built: what QEMU is handed), its default ``ready`` line and the boot-time
metrics it reads from the console.  docs/images.md is the user's page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ...registry import Registry

IMAGES: Registry = Registry("image kind")


@dataclass
class Built:
    """A built (or cached) image: what QEMU boots, and what run.json says about it."""

    kernel: Path | None = None  # -kernel (pxOS on the PVH path, a user's kernel, Linux)
    initrd: Path | None = None  # -initrd
    disk: Path | None = None  # the boot disk (pxOS on the BIOS path)
    append: str | None = None  # -append (a kernel command line)
    record: dict = field(default_factory=dict)  # run.json "image"
    files: dict[str, str] = field(default_factory=dict)  # run-dir file name -> content
    summary: str = ""  # one progress line
    memory_mb: int = 0  # the least guest memory it boots in (0: no opinion)


class ImageKind:
    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]] = ()  # its keys under image: (besides kind)
    default_ready: ClassVar[str | None] = "@stage ready"  # None: the scenario must say
    payloads: ClassVar[bool] = False  # may carry a device's payload (the vGPU program)
    metrics: ClassVar[dict[str, str]] = {}  # metric name -> meaning

    def parse(self, f, ctx) -> Any | None:
        raise NotImplementedError

    def plan(self, spec: Any, profile: Any) -> Any:
        """The spec with what only planning can check (UserError otherwise)."""
        return spec

    def recipe(self, spec: Any, payload: Path | None):
        """What the build needs besides the spec (pxOS: defines and payload)."""
        return None

    def build(self, spec: Any, recipe: Any, cache_root: Path | None, log) -> Built:
        raise NotImplementedError

    def boot_metrics(self, lines, ready) -> dict[str, float]:
        from ...metrics import boot_metrics

        return boot_metrics(lines, ready) if ready is not None else {}

    def to_json(self, spec: Any) -> dict:
        return {}


from . import kernel, linux, pxos  # noqa: E402,F401  (each registers its kind)

__all__ = ["IMAGES", "Built", "ImageKind"]
