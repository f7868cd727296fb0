"""linux: Linux built from Debian's own packages (hil/images/linux.py, docs/images.md):
the yardstick pxOS's drivers are measured against.

    image: {kind: linux, packages: [fio], modules: [nvme], init: "fio --name=r ..."}
"""

from __future__ import annotations

from ...errors import UserError
from . import IMAGES, Built, ImageKind
from .kernel import _after_where


def _stage_metrics() -> dict[str, str]:
    from ..initscript import STAGES

    return {f"linux_ms.{s.name}": f"host ms from QEMU launch to: {s.meaning}" for s in STAGES}


@IMAGES.register
class LinuxKind(ImageKind):
    name = "linux"
    keys = ("packages", "modules", "init", "append", "shell")
    default_ready = r"^@linux init up="  # a regex: /init runs (docs/images.md)

    @property
    def metrics(self) -> dict[str, str]:  # type: ignore[override]
        return _stage_metrics()

    def parse(self, f, ctx):
        from ..linux import LinuxSpec

        data = {k: f.raw(k) for k in self.keys if f.has(k)}
        try:
            return LinuxSpec.from_mapping(data, f.where or "image")
        except UserError as e:
            f.error(None, _after_where(e))
            return None

    def build(self, spec, recipe, cache_root, log):
        from ..linux import build_linux

        img = build_linux(spec, log=log)
        return Built(
            kernel=img.kernel,
            initrd=img.initrd,
            append=img.cmdline,
            memory_mb=img.memory_mb,
            record={
                "kind": "linux",
                "key": img.key,
                "cached": img.cached,
                "dir": str(img.dir),
                "kernel_version": img.kernel_version,
                "modules": list(img.modules),
                "packages": img.packages,
                "cmdline": img.cmdline,
            },
            summary=(
                f"{'cached' if img.cached else 'built'} Linux {img.kernel_version} "
                f"{img.key[:12]}, {len(img.packages)} packages"
            ),
        )

    def boot_metrics(self, lines, ready):
        from ..initscript import classify

        m = super().boot_metrics(lines, ready)
        for ln in lines:
            found = classify(ln.text)
            if found and f"linux_ms.{found[0]}" not in m:
                m[f"linux_ms.{found[0]}"] = round(ln.t * 1000, 3)
        return m

    def to_json(self, spec):
        return {"kind": "linux", **spec.to_json()}
