"""The shared libraries a set of ELF programs needs, found inside an unpacked tree.

For each ELF: its interpreter (PT_INTERP, e.g. /lib64/ld-linux-x86-64.so.2) and its
DT_NEEDED entries, looked up the way ld.so does on Debian: DT_RPATH (when there is no
DT_RUNPATH), DT_RUNPATH (with $ORIGIN), then the multiarch and plain library
directories. Repeated until nothing new is needed. Paths are resolved inside the tree
(`root`): symlinks, absolute ones included, are followed relative to it and can never
lead out of it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from hil.errors import BuildError

LIB_DIRS = (
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
)
MAX_LINKS = 40


def resolve_in(root: Path, rel: str) -> str | None:
    """The real path (relative to `root`) that `rel` leads to, following symlinks inside
    the tree; None when it does not exist or loops."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        if here.is_symlink():
            links += 1
            if links > MAX_LINKS:
                return None
            target = str(here.readlink())
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not here.exists():
            return None
        done.append(part)
    return "/".join(done)


@dataclass
class ElfInfo:
    interp: str | None = None
    needed: list[str] = field(default_factory=list)
    rpath: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)


def read_elf(path: Path) -> ElfInfo | None:
    """Interpreter and dynamic entries of an ELF file; None if it is not an ELF."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return None
        f.seek(0)
        try:
            elf = ELFFile(f)
            info = ElfInfo()
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    info.interp = seg.get_interp_name()
            for sec in elf.iter_sections():
                if not isinstance(sec, DynamicSection):
                    continue
                for tag in sec.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        info.needed.append(tag.needed)
                    elif tag.entry.d_tag == "DT_RPATH":
                        info.rpath += tag.rpath.split(":")
                    elif tag.entry.d_tag == "DT_RUNPATH":
                        info.runpath += tag.runpath.split(":")
            return info
        except (ELFError, ValueError, KeyError) as e:
            raise BuildError(f"{path}: unreadable ELF ({e})") from e


def _search_dirs(info: ElfInfo, origin: str) -> list[str]:
    dirs = [] if info.runpath else list(info.rpath)
    dirs += info.runpath
    out = [d.replace("$ORIGIN", "/" + origin).replace("${ORIGIN}", "/" + origin) for d in dirs]
    return [posixpath.normpath(d).lstrip("/") for d in out if d] + list(LIB_DIRS)


@dataclass
class Closure:
    """What to copy: path in the image -> real path in the tree (relative to root)."""

    files: dict[str, str] = field(default_factory=dict)
    lib_dirs: list[str] = field(default_factory=list)  # directories libraries came from
    missing: list[tuple[str, str]] = field(default_factory=list)  # (optional file, library)


def needed_closure(root: Path, programs: list[str], optional: tuple[str, ...] = ()) -> Closure:
    """Every library (and interpreter) the ELF files `programs` and `optional` (paths
    relative to `root`) need, transitively. A library not found in the tree is a
    BuildError naming the program that needs it; for an `optional` file (a plugin, a
    helper library) it is only recorded in `missing`."""
    out = Closure()
    seen: set[str] = set()
    _walk(root, list(programs), out, seen, strict=True)
    for rel in optional:
        _walk(root, [rel], out, seen, strict=False)
    return out


def _walk(root: Path, queue: list[str], out: Closure, seen: set[str], strict: bool) -> None:
    start = queue[0] if queue else ""
    while queue:
        rel = queue.pop(0)
        real = resolve_in(root, rel)
        if real is None or real in seen:
            continue
        seen.add(real)
        info = read_elf(root / real)
        if info is None:
            continue
        wanted = []
        if info.interp:
            interp = info.interp.lstrip("/")
            target = resolve_in(root, interp)
            if target is None:
                if strict:
                    raise BuildError(
                        f"/{rel} needs the interpreter {info.interp}, not in the packages"
                    )
                out.missing.append((start, info.interp))
                continue
            wanted.append((interp, target))
        dirs = _search_dirs(info, posixpath.dirname(real))
        for lib in info.needed:
            found = _find(root, lib, dirs)
            if found is None:
                if strict:
                    raise BuildError(
                        f"/{rel} needs {lib}, which none of the unpacked packages provides "
                        f"(searched {', '.join(dirs[:8])}). Add the package that ships it "
                        "to image.packages."
                    )
                out.missing.append((start, lib))
                break
            wanted.append(found)
        else:
            for where, target in wanted:
                out.files.setdefault(where, target)
                d = posixpath.dirname(where)
                if where != (info.interp or "").lstrip("/") and d not in out.lib_dirs:
                    out.lib_dirs.append(d)
                queue.append(where)


def _find(root: Path, lib: str, dirs: list[str]) -> tuple[str, str] | None:
    if "/" in lib:
        target = resolve_in(root, lib.lstrip("/"))
        return (lib.lstrip("/"), target) if target else None
    for d in dirs:
        target = resolve_in(root, f"{d}/{lib}")
        if target is not None and (root / target).is_file():
            return f"{d}/{lib}", target
    return None
