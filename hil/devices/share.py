"""share: a host directory the guest mounts read-only over virtio-9p.

    - share: {path: /, tag: host}          # the host's whole filesystem
    - share: {path: .., tag: repo}         # relative: from the scenario's directory
    - share: {image_cache: true, tag: img} # hil's pxOS image cache (where hil.image builds)

The guest mounts it with ``mount -t 9p -o trans=virtio,version=9p2000.L,ro <tag> <dir>``.
Read-only is not an option: QEMU's ``readonly=on`` refuses every write at the host side,
whatever the guest mounts, so a guest (an L1 Linux running hil itself, docs/passthrough.md)
can read the host's programs and this checkout but never change them.  ``multidevs=remap``
because a share of ``/`` crosses the host's mount points: without it two files on
different host filesystems could carry the same inode number in the guest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .. import qemuopt
from .base import AttachContext, DeviceKind, PciId
from .registry import DEVICES

# virtio-9p's mount tag: QEMU 7.2 takes at most 31 bytes (MAX_TAG_LEN 32 with the NUL).
TAG_RE = re.compile(r"[A-Za-z0-9_-]{1,31}")
# virtio-9p-pci as QEMU 7.2 builds it (transitional ID; class 0x0002, as Linux's sysfs
# shows it in an L1 guest).
PCI_ID = PciId(0x1AF4, 0x1009, 0x000200)


@dataclass(frozen=True)
class Share:
    path: str  # absolute, resolved when parsed
    tag: str
    behind_root_port: bool = False
    kind = "share"


def image_cache() -> Path:
    """hil's pxOS image cache, as hil.image resolves it (PXOS_HIL_CACHE, else ~/.cache)."""
    from ..image import _cache_root

    return _cache_root(None)


@DEVICES.register
class ShareKind(DeviceKind):
    name = "share"
    keys = ("path", "image_cache", "tag")
    spec = Share

    def parse(self, f, ctx):
        tag = f.get("tag", str, example="tag: host")
        cache = f.get("image_cache", bool, False, example="image_cache: true")
        raw = f.get("path", str, None, example="path: /")
        if tag is not None and not TAG_RE.fullmatch(tag):
            f.error("tag", "must be 1 to 31 letters, digits, '_' or '-' (virtio-9p's mount tag).")
            tag = None
        if cache and raw is not None:
            f.error("path", "give either path or image_cache: true, not both.")
            return None
        if not cache and raw is None:
            f.error(
                None, "required key 'path' is missing. Add e.g. 'path: /' or image_cache: true."
            )
            return None
        if raw is not None and any(c in raw for c in "\n\r\0"):
            f.error("path", "holds a newline or NUL, which no QEMU option can carry; rename it.")
            return None
        path = image_cache() if cache else _resolve(raw, ctx.base_dir)
        if not cache and not path.is_dir():
            f.error("path", f"{path} is not a directory on this host; share a directory.")
            return None
        return Share(str(path), tag) if tag else None

    def pci_ids(self, spec):
        return [PCI_ID]

    def attach(self, spec, ctx: AttachContext):
        # The image cache of a host that has not built anything yet: QEMU needs the directory.
        Path(spec.path).mkdir(parents=True, exist_ok=True)
        fsdev = f"{ctx.name}-fs"
        ctx.add(
            "-fsdev",
            qemuopt.opts(
                "local",
                id=fsdev,
                path=spec.path,
                security_model="none",  # no ownership mapping: the files are only read
                readonly="on",
                multidevs="remap",
            ),
            "-device",
            qemuopt.opts("virtio-9p-pci", fsdev=fsdev, mount_tag=spec.tag) + ctx.bus,
        )

    def describe(self, spec):
        return f"share {spec.path} as {spec.tag} (read-only)"


def _resolve(raw: str, base: Path) -> Path:
    p = Path(raw).expanduser()
    return (p if p.is_absolute() else base / p).resolve()
