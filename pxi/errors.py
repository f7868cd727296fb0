"""Errors the pxi tools report to users.

A ``PxiError`` is a user-facing problem (a bad source file, a refused image, a program
that faulted): the CLI prints its one-paragraph message and exits with its code, never a
traceback.  Bugs in callers of the executor API (responding to a thread that is not
blocked, say) are ordinary ``ValueError``s.
"""

from __future__ import annotations

EXIT_FAULT = 1  # the program faulted or ran out of steps
EXIT_INVALID = 2  # bad input: source, image, command line
EXIT_INFRA = 3  # no wgpu adapter, missing file system access


class PxiError(Exception):
    exit_code = EXIT_INVALID


class AsmError(PxiError):
    """An assembler error at file:line."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where


class ImageError(PxiError):
    """A PNG that is not a valid PXI program image."""


class ProgramFault(PxiError):
    """A program faulted or ran away (its message names thread, pc and pixel)."""

    exit_code = EXIT_FAULT


class BackendError(PxiError):
    """An executor backend is unavailable (e.g. no wgpu adapter)."""

    exit_code = EXIT_INFRA
