"""Values into QEMU options, safely.

QEMU splits ``-device nvme,serial=X,drive=Y`` at commas and ``=``; a value that holds a
comma becomes a second property (``serial: 'X,bus=nosuchbus'``).  Every value hil puts
into such an option goes through ``value()``: QEMU's own escaping doubles a comma, and
what cannot be escaped (a newline, a NUL) is refused.  ``opts()`` builds a whole option.
"""

from __future__ import annotations


class UnsafeValue(ValueError):
    """A value that cannot be passed to QEMU at all."""


def value(v: object) -> str:
    s = str(v)
    if any(c in s for c in "\n\r\0"):
        raise UnsafeValue(f"{s!r} holds a newline or NUL, which no QEMU option can carry")
    return s.replace(",", ",,")


def props(**kv: object) -> str:
    """``key=value,...`` with every value escaped; None values are left out."""
    return ",".join(f"{k}={value(v)}" for k, v in kv.items() if v is not None)


def opts(driver: str, **kv: object) -> str:
    """``driver,key=value,...`` (``-device``, ``-netdev``, ``-object``, ``-chardev``)."""
    rest = props(**kv)
    return value(driver) + ("," + rest if rest else "")
