"""A writer for the newc ("SVR4 without CRC") cpio format, the one Linux unpacks as an
initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).

Python's stdlib reads and writes tar and zip but not cpio, so this is the small part
of the format the kernel needs: directories, regular files, symlinks and device nodes.
Every entry gets uid/gid 0, mtime 0 and a running inode number, so the same tree gives
the same bytes (the image cache relies on it). Each header is 110 ASCII bytes:

    "070701" then 13 fields of 8 hex digits: ino mode uid gid nlink mtime filesize
    devmajor devminor rdevmajor rdevminor namesize check

followed by the name and its NUL, padded to 4 bytes, then the data, padded to 4 bytes.
The archive ends with an entry named "TRAILER!!!".

The kernel does not create missing parent directories (init/initramfs.c), so `Tree`
adds each parent before its children, and writes entries in path order.
"""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_LEN = 110
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One archive member. `data` is bytes, or a host file read when written."""

    path: str  # relative, no leading "/", e.g. "usr/bin/fio"
    mode: int  # including the file type bits (stat.S_IFREG | 0o755)
    data: bytes | Path = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes

    def size(self) -> int:
        return self.data.stat().st_size if isinstance(self.data, Path) else len(self.data)

    def chunks(self) -> Iterator[bytes]:
        if isinstance(self.data, bytes):
            yield self.data
            return
        with open(self.data, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk


def _norm(path: str) -> str:
    """'/usr/bin/x' or 'usr//bin/x' -> 'usr/bin/x'; refuses '..' and the empty name."""
    p = PurePosixPath("/" + path)
    parts = [x for x in p.parts[1:] if x not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"cpio: bad member path {path!r}")
    return "/".join(parts)


class Tree:
    """The members of an archive, by path; parents are added as directories."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, path: str) -> bool:
        return _norm(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def paths(self) -> list[str]:
        return sorted(self._entries)

    def get(self, path: str) -> Entry | None:
        return self._entries.get(_norm(path))

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            have = self._entries.get(parent)
            if have is None:
                self._entries[parent] = Entry(parent, stat.S_IFDIR | 0o755)
            elif not stat.S_ISDIR(have.mode):
                raise ValueError(f"cpio: {parent} is not a directory, cannot hold {path}")

    def _add(self, entry: Entry, replace: bool) -> None:
        have = self._entries.get(entry.path)
        if have is not None and not replace:
            if stat.S_ISDIR(have.mode) and stat.S_ISDIR(entry.mode):
                return
            raise ValueError(f"cpio: {entry.path} added twice")
        self._parents(entry.path)
        self._entries[entry.path] = entry

    def dir(self, path: str, mode: int = 0o755) -> None:
        self._add(Entry(_norm(path), stat.S_IFDIR | (mode & 0o7777)), replace=False)

    def file(self, path: str, data: bytes | Path, mode: int = 0o644, replace=False) -> None:
        self._add(Entry(_norm(path), stat.S_IFREG | (mode & 0o7777), data), replace)

    def symlink(self, path: str, target: str, replace: bool = False) -> None:
        if not target or "\0" in target:
            raise ValueError(f"cpio: bad symlink target {target!r} for {path}")
        self._add(Entry(_norm(path), stat.S_IFLNK | 0o777, target.encode()), replace)

    def device(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        ftype = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[kind]
        self._add(Entry(_norm(path), ftype | (mode & 0o7777), b"", (major, minor)), False)

    def entries(self) -> list[Entry]:
        # Sorting by path components puts every directory before what it holds.
        return [self._entries[p] for p in sorted(self._entries, key=lambda p: p.split("/"))]


def _header(ino: int, e: Entry, size: int, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, 0, size, 0, 0, e.rdev[0], e.rdev[1], len(name) + 1, 0)
    for v in fields:
        if not 0 <= v <= 0xFFFFFFFF:
            raise ValueError(f"cpio: {e.path}: field value {v} does not fit newc's 32 bits")
    return MAGIC + b"".join(b"%08X" % v for v in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write(tree: Tree, out: BinaryIO) -> int:
    """Write `tree` as a newc archive to `out`; returns the bytes written."""
    written = 0

    def put(b: bytes) -> None:
        nonlocal written
        out.write(b)
        written += len(b)

    for ino, e in enumerate(tree.entries(), start=1):
        name = e.path.encode()
        size = e.size()
        put(_header(ino, e, size, name) + name + b"\0")
        put(_pad(HEADER_LEN + len(name) + 1))
        n = 0
        for chunk in e.chunks():
            n += len(chunk)
            put(chunk)
        if n != size:
            raise ValueError(f"cpio: {e.data} changed size while being archived")
        put(_pad(size))
    name = TRAILER.encode()
    put(_header(0, Entry(TRAILER, 0), 0, name) + name + b"\0")
    put(_pad(HEADER_LEN + len(name) + 1))
    return written


def write_gzip(tree: Tree, path: Path, level: int = 6) -> int:
    """Write `tree` as a gzip-compressed newc archive (an initramfs) to `path`.

    mtime=0 in the gzip header keeps the output reproducible. Returns the
    uncompressed size."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level,
                                                mtime=0, filename="") as gz:  # fmt: skip
        return write(tree, gz)
