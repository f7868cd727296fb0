"""Image kinds other than pxOS: a user's own kernel (`kernel`) and a Linux built from
Debian packages (`linux`). docs/images.md is the user's page.

    from hil.images import KernelSpec, load_kernel, LinuxSpec, build_linux
"""

from hil.images.kernelfile import KernelImage, KernelInfo, KernelSpec, inspect_kernel, load_kernel
from hil.images.linux import BASE_APPEND, LinuxImage, LinuxSpec, build_linux, validate_spec

__all__ = [
    "BASE_APPEND",
    "KernelImage",
    "KernelInfo",
    "KernelSpec",
    "LinuxImage",
    "LinuxSpec",
    "build_linux",
    "inspect_kernel",
    "load_kernel",
    "validate_spec",
]
