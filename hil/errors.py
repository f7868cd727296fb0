"""Error taxonomy shared by every hil module.

Each class carries the process exit code it maps to, so the CLI never has to
guess (docs/exit-codes.md is the user-facing table).  Messages are written for
the user: one paragraph that names the file/key/tool at fault and the fix.
"""

from __future__ import annotations

# Exit codes (documented in docs/exit-codes.md; keep the two in step).
EXIT_PASS = 0
EXIT_FAIL = 1  # an expectation did not hold (test failure)
EXIT_INVALID = 2  # bad input: scenario/profile YAML, CLI usage
EXIT_INFRA = 3  # infrastructure: tool missing, QEMU would not start, build broke
EXIT_TIMEOUT = 4  # the scenario (or a step) ran out of time
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


class HilError(Exception):
    """Base class: an error with a user-facing message and an exit code."""

    exit_code = EXIT_INFRA
    kind = "error"


class UserError(HilError):
    """Bad input from the user (scenario, profile, command line)."""

    exit_code = EXIT_INVALID
    kind = "invalid"


class InfraError(HilError):
    """The test infrastructure is broken or missing (not the system under test)."""

    exit_code = EXIT_INFRA
    kind = "infra"


class BuildError(InfraError):
    """Building the image failed (compiler error, size budget exceeded)."""

    kind = "build"
