"""Kinds found by name: device kinds, step kinds and check kinds are plug-ins.

Each kind is one class in one file that registers itself with its registry::

    @DEVICES.register
    class Nvme(DeviceKind):
        name = "nvme"

A scenario names a kind by that name; an unknown name is a validation error that lists
the known ones.  Tests add a throwaway kind with ``with REGISTRY.added(MyKind): ...``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from .yamlsrc import suggest

K = TypeVar("K")


class Registry(Generic[K]):
    def __init__(self, what: str):
        self.what = what  # "device kind", "step kind", ...
        self._kinds: dict[str, K] = {}

    def register(self, cls: type) -> type:
        """Class decorator: one instance of ``cls`` serves every use of its name."""
        name = cls.name
        if name in self._kinds:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._kinds[name] = cls()
        return cls

    def unregister(self, name: str) -> None:
        self._kinds.pop(name, None)

    @contextlib.contextmanager
    def added(self, cls: type) -> Iterator[K]:
        self.register(cls)
        try:
            yield self._kinds[cls.name]
        finally:
            self.unregister(cls.name)

    def get(self, name: str) -> K | None:
        return self._kinds.get(name) if isinstance(name, str) else None

    def __getitem__(self, name: str) -> K:
        return self._kinds[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._kinds

    def names(self) -> list[str]:
        return list(self._kinds)

    def kinds(self) -> list[K]:
        return list(self._kinds.values())

    def unknown(self, name: object, names: list[str] | None = None) -> str:
        """The sentence for a name nobody registered (``names``: the ones allowed here)."""
        names = self.names() if names is None else names
        shown = repr(name) if len(repr(name)) <= 40 else repr(name)[:37] + "..."
        return f"unknown {self.what} {shown}{suggest(str(name), names)}; known: {', '.join(names)}."
