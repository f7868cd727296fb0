"""Kernel modules: find them by name, order them by dependency, decompress them.

A module's dependencies come from `modules.dep` when the kernel tree has one. Debian's
kernel packages do not ship it (the package's postinst runs depmod on the target), so
otherwise they come from each module's own `.modinfo` section: the `depends=` entry
that modpost writes at build time and from which depmod derives modules.dep.
`modules.builtin` lists what is compiled into the kernel: asking for one of those is
fine and loads nothing.

Module files may be `.ko`, `.ko.xz` or `.ko.gz`; they are decompressed here, on the
host, so the initramfs needs no decompressor and busybox's `insmod` (which calls
init_module with the file's bytes) loads them as they are.
"""

from __future__ import annotations

import difflib
import gzip
import io
import lzma
import re
from dataclasses import dataclass
from pathlib import Path

from hil.errors import BuildError, UserError

SUFFIXES = (".ko", ".ko.xz", ".ko.gz")
NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
MAX_MODULE = 64 << 20  # no module is near this; guards the decompressors


def canonical(name: str) -> str:
    """Module names treat '-' and '_' alike (nvme-core == nvme_core)."""
    return name.replace("-", "_")


def _stem(filename: str) -> str | None:
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            return canonical(filename[: -len(suffix)])
    return None


@dataclass(frozen=True)
class Module:
    name: str  # canonical
    relpath: str  # under lib/modules/<ver>/, e.g. kernel/drivers/nvme/host/nvme.ko

    def plain_relpath(self) -> str:
        """Where the decompressed module goes in the initramfs."""
        for suffix in (".xz", ".gz"):
            if self.relpath.endswith(".ko" + suffix):
                return self.relpath[: -len(suffix)]
        return self.relpath


def read_module(path: Path) -> bytes:
    """The module's ELF bytes, decompressed if need be."""
    raw = path.read_bytes()
    try:
        if path.name.endswith(".xz"):
            data = lzma.LZMADecompressor().decompress(raw, max_length=MAX_MODULE)
        elif path.name.endswith(".gz"):
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                data = f.read(MAX_MODULE)
        else:
            data = raw
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise BuildError(f"kernel module {path}: cannot decompress it ({e})") from e
    if data[:4] != b"\x7fELF":
        raise BuildError(f"kernel module {path}: not an ELF file after decompression")
    return data


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The key=value entries of a module's .modinfo section."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        sec = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
        raw = sec.data() if sec is not None else b""
    except (ELFError, ValueError, OSError) as e:
        raise BuildError(f"kernel module: unreadable ELF ({e})") from e
    out: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            out.setdefault(key, []).append(value)
    return out


class ModuleTree:
    """The modules of one kernel: <root>/lib/modules/<version>/."""

    def __init__(self, moddir: Path):
        self.dir = moddir
        if not moddir.is_dir():
            raise BuildError(f"kernel modules directory {moddir} missing")
        self.by_name: dict[str, Module] = {}
        for path in sorted(moddir.rglob("*.ko*")):
            name = _stem(path.name)
            if name is not None and path.is_file():
                self.by_name.setdefault(name, Module(name, path.relative_to(moddir).as_posix()))
        self.builtin = self._builtin()
        self._dep_file = self._modules_dep()

    def _builtin(self) -> set[str]:
        f = self.dir / "modules.builtin"
        if not f.is_file():
            return set()
        return {n for line in f.read_text().split() if (n := _stem(Path(line).name))}

    def _modules_dep(self) -> dict[str, list[str]] | None:
        f = self.dir / "modules.dep"
        if not f.is_file():
            return None
        deps = {}
        for line in f.read_text().splitlines():
            head, sep, rest = line.partition(":")
            name = _stem(Path(head).name) if sep else None
            if name:
                deps[name] = [d for p in rest.split() if (d := _stem(Path(p).name))]
        return deps

    def depends(self, mod: Module) -> list[str]:
        if self._dep_file is not None:
            return self._dep_file.get(mod.name, [])
        info = modinfo(read_module(self.dir / mod.relpath))
        return [canonical(d) for v in info.get("depends", []) for d in v.split(",") if d]

    def _unknown(self, name: str, key: str) -> UserError:
        close = difflib.get_close_matches(canonical(name), list(self.by_name), n=3)
        hint = f" Close names: {', '.join(close)}." if close else ""
        return UserError(
            f"{key}: this kernel ({self.dir.name}) has no module {name!r}, neither as a file "
            f"under lib/modules/{self.dir.name}/ nor built in (modules.builtin).{hint} "
            "Use the module's file name without .ko (e.g. nvme, e1000, xhci_pci)."
        )

    def resolve(self, names: tuple[str, ...], key: str = "image.modules") -> list[Module]:
        """The modules to load for `names`, dependencies first, each once. Built-in
        modules are skipped; an unknown name is a UserError naming `key[i]`."""
        order: list[Module] = []
        state: dict[str, str] = {}  # name -> "visiting" | "done"

        def visit(name: str, where: str, chain: tuple[str, ...]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                raise BuildError(f"kernel modules: dependency cycle {' -> '.join(chain + (name,))}")
            mod = self.by_name.get(name)
            if mod is None:
                if name in self.builtin:
                    state[name] = "done"
                    return
                raise self._unknown(name, where)
            state[name] = "visiting"
            for dep in self.depends(mod):
                visit(dep, f"{where} (needed by {mod.name})", chain + (name,))
            state[name] = "done"
            order.append(mod)

        for i, name in enumerate(names):
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                raise UserError(f"{key}[{i}]: {name!r} is not a module name (e.g. nvme, e1000).")
            visit(canonical(name), f"{key}[{i}]", ())
        return order
