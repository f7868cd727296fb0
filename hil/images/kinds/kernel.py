"""kernel: a user's own kernel (a bzImage, a PVH ELF or a multiboot kernel), booted with
``-kernel``; hil never modifies the files (QEMU only reads them).

    image: {kind: kernel, kernel: build/bzImage, initrd: build/rootfs.cpio.gz, append: "quiet"}
    ready: 'my kernel is up'     # required: hil cannot know what your kernel prints
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import UserError
from . import IMAGES, Built, ImageKind


@IMAGES.register
class KernelKind(ImageKind):
    name = "kernel"
    keys = ("kernel", "initrd", "append")
    default_ready = None

    def parse(self, f, ctx):
        from ..kernelfile import KernelSpec

        data = {k: f.raw(k) for k in self.keys if f.has(k)}
        try:
            spec = KernelSpec.from_mapping(data, ctx.base_dir, f.where or "image")
        except UserError as e:
            f.error(None, _after_where(e))
            return None
        return spec

    def plan(self, spec, profile):
        from ..kernelfile import load_kernel

        return load_kernel(spec)  # validates the files (a UserError names the key)

    def build(self, spec, recipe, cache_root, log):
        info = spec.info
        return Built(
            kernel=spec.kernel,
            initrd=spec.initrd,
            append=spec.append or None,
            record={
                "kind": "kernel",
                "kernel": str(spec.kernel),
                "initrd": str(spec.initrd) if spec.initrd else None,
                "append": spec.append,
                "format": info.format,
                "description": str(info),
            },
            summary=f"kernel {Path(spec.kernel).name} ({info.format})",
        )

    def to_json(self, spec):
        return {"kind": "kernel", "kernel": str(getattr(spec, "kernel", ""))}


def _after_where(e: Exception) -> str:
    """A builder's message without its own 'image.key:' prefix (Fields adds the place)."""
    text = str(e)
    head, sep, rest = text.partition(": ")
    return rest if sep and head.startswith("image") and os.sep not in head else text
