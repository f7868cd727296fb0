"""Image kinds other than pxOS: a user's own kernel (`kernel`) and a Linux built from
Debian packages (`linux`). docs/images.md is the user's page.

    from hil.images import KernelSpec, load_kernel, LinuxSpec, build_linux

The builders load when first used: validating or running a pxOS scenario never pays for
importing them (benchmarks/suite_bench.py counts hil's start-up).
"""

from __future__ import annotations

import importlib

_WHERE = {
    "KernelImage": "kernelfile",
    "KernelInfo": "kernelfile",
    "KernelSpec": "kernelfile",
    "inspect_kernel": "kernelfile",
    "load_kernel": "kernelfile",
    "BASE_APPEND": "linux",
    "LinuxImage": "linux",
    "LinuxSpec": "linux",
    "build_linux": "linux",
    "validate_spec": "linux",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"hil.images.{_WHERE[name]}"), name)
    raise AttributeError(name)
