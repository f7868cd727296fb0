"""Choosing an executor backend by name."""

from __future__ import annotations

from .errors import PxiError
from .executor import Executor
from .image import Program

BACKENDS = ("numpy", "wgpu")


def create(backend: str, program: Program, threads: int, memory_bytes: int, **kw) -> Executor:
    """An executor of the named backend ("numpy" or "wgpu")."""
    if backend == "numpy":
        from .numpy_exec import NumpyExecutor

        kw = {k: v for k, v in kw.items() if k in ("entry", "profile", "memory")}
        return NumpyExecutor(program, threads, memory_bytes, **kw)
    if backend == "wgpu":
        from .wgpu_exec import WgpuExecutor

        kw = {k: v for k, v in kw.items() if k not in ("memory",)}
        return WgpuExecutor(program, threads, memory_bytes, **kw)
    raise PxiError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}.")
