"""pxos: the pxOS image built from this repository's boot/ and microkernel/ (hil/image.py).

image: {boot_fault: true}      # kind: pxos is the default
"""

from __future__ import annotations

from dataclasses import dataclass

from . import IMAGES, Built, ImageKind


@dataclass(frozen=True)
class PxosImage:
    boot_fault: bool = False  # the kernel executes ud2 right after @stage kernel
    spin_idle: bool = False  # idle() busy-waits instead of hlt: cpu_idle's negative control
    boot_delay_ms: int = 0  # a planted boot delay before `ready` (tests of the nightly)
    kind = "pxos"


@IMAGES.register
class PxosKind(ImageKind):
    name = "pxos"
    keys = ("boot_fault", "spin_idle", "boot_delay_ms")
    payloads = True

    def parse(self, f, ctx):
        boot_fault = f.get("boot_fault", bool, False)
        spin_idle = f.get("spin_idle", bool, False)
        delay = f.get("boot_delay_ms", int, 0, example="boot_delay_ms: 50")
        if delay is not None and (not 0 <= delay <= 5000 or delay % 10):
            f.error("boot_delay_ms", "must be a multiple of 10 from 0 to 5000 (milliseconds).")
            delay = 0
        return PxosImage(bool(boot_fault), bool(spin_idle), delay or 0)

    def recipe(self, spec, payload):
        from ... import image as pximage

        defines: list[tuple[str, str]] = []
        allowance = 0
        if spec.boot_fault:
            defines.append(("PXOS_BOOT_FAULT", "1"))
        if spec.spin_idle:
            defines.append(("PXOS_SPIN_IDLE", "1"))
        if spec.boot_delay_ms:
            defines.append(("PXOS_BOOT_DELAY_MS", str(spec.boot_delay_ms)))
            allowance += 64  # its loop: test instrumentation, not the shipped kernel
        return pximage.ImageRecipe(defines=tuple(defines), payload=payload, allowance=allowance)

    def build(self, spec, recipe, cache_root, log):
        from ... import image as pximage

        img = pximage.build(recipe, cache_root=cache_root, log=log)
        size = img.size
        state = "cached" if img.cached else "built"
        return Built(
            kernel=img.elf,
            initrd=img.payload,
            disk=img.disk,
            record={
                "kind": "pxos",
                "key": img.key,
                "version": img.version,
                "cached": img.cached,
                "dir": str(img.dir),
                "size": {
                    "text": size.text,
                    "rodata": size.rodata,
                    "data": size.data,
                    "bss": size.bss,
                    "counted": size.counted,
                    "budget": size.budget,
                },
            },
            files={"image-size.txt": size.format() + "\n"},
            summary=f"{state} {img.key[:12]}, kernel {size.counted}/{size.budget} bytes",
        )

    def to_json(self, spec):
        return {"kind": "pxos"}
