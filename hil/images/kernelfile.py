"""The `kernel` image kind: a user's own kernel file, booted with QEMU `-kernel`.

hil never modifies the user's files: this module only reads them (a bounded prefix)
to tell, before QEMU starts, whether QEMU's x86 loader will take the file, and which
way. QEMU 7.2 (hw/i386/x86.c, x86_load_linux) tries, in this order:

1. a Linux bzImage: "HdrS" at offset 0x202 (the x86 boot protocol header), protocol
   version at 0x206, loadflags at 0x211 (bit 0 LOADED_HIGH: the kernel is loaded at
   1 MiB, i.e. a bzImage; without it, an old zImage);
2. an ELF carrying a PVH note: a PT_NOTE with name "Xen", type 18
   (XEN_ELFNOTE_PHYS32_ENTRY), whose descriptor is the 32-bit entry address;
3. a multiboot (version 1) header: magic 0x1BADB002 at a 4-byte aligned offset in the
   first 8 KiB, with flags and a checksum making the three words sum to 0 mod 2^32.
   QEMU refuses a 64-bit ELF here unless the header's a.out kludge (flag bit 16) gives
   the load addresses.

Anything else QEMU would load as an ancient real-mode kernel and jump into garbage, so
it is refused here with the bytes that were checked. docs/images.md is the user's page.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from hil.errors import UserError

HDRS_OFF = 0x202
HDRS = b"HdrS"
MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192
MULTIBOOT_AOUT_KLUDGE = 1 << 16
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4
# Enough for the boot header, the ELF program headers and their notes; the kernel
# version string of a bzImage lies in the setup code (< 64 KiB).
READ_LIMIT = 1 << 20
MAX_NOTES = 4096
DEFAULT_CMDLINE_SIZE = 255  # boot protocol < 2.06 (Documentation/arch/x86/boot.rst)


@dataclass(frozen=True)
class KernelInfo:
    """What QEMU will make of a kernel file."""

    format: str  # "bzimage" | "pvh-elf" | "multiboot"
    detail: str  # one line for the user, e.g. "bzImage, boot protocol 2.15, 6.1.0-57-amd64 ..."
    version: str  # boot protocol (bzImage), "ELF32"/"ELF64" (PVH), "1" (multiboot)
    kernel_version: str = ""  # the bzImage's version string, if it has one
    cmdline_max: int | None = None  # longest -append the kernel accepts, if it says
    entry: int | None = None  # PVH entry address


def _refuse(path: Path, key: str, checked: str) -> UserError:
    return UserError(
        f"{key}: {path} is not a kernel QEMU can boot with -kernel. Checked: {checked}. "
        "Give a Linux bzImage (e.g. arch/x86/boot/bzImage or Debian's /boot/vmlinuz-*), "
        "an ELF with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY, type 18) or a multiboot v1 "
        "image (docs/images.md)."
    )


def _u16(b: bytes, off: int) -> int:
    return struct.unpack_from("<H", b, off)[0]


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def _cstr(b: bytes, off: int, limit: int = 256) -> str:
    if not 0 <= off < len(b):
        return ""
    end = b.find(b"\0", off, off + limit)
    raw = b[off : end if end >= 0 else off + limit]
    return raw.decode("ascii", "replace")


def _bzimage(path: Path, key: str, head: bytes) -> KernelInfo:
    proto = _u16(head, 0x206)
    major, minor = proto >> 8, proto & 0xFF
    loadflags = head[0x211] if len(head) > 0x211 else 0
    if proto < 0x200 or not loadflags & 1:
        raise UserError(
            f"{key}: {path} is a Linux kernel with boot protocol {major}.{minor:02d} and "
            f"loadflags {loadflags:#04x} (LOADED_HIGH {'set' if loadflags & 1 else 'clear'}): "
            "an old zImage, which QEMU cannot give an initrd and which modern QEMU machines "
            "do not boot reliably. Build a bzImage (make bzImage)."
        )
    version = ""
    ver_off = _u16(head, 0x20E) if len(head) >= 0x210 else 0
    if ver_off:
        version = _cstr(head, 0x200 + ver_off)
    cmdline_max = DEFAULT_CMDLINE_SIZE
    if proto >= 0x206 and len(head) >= 0x23C:
        cmdline_max = _u32(head, 0x238)
    detail = f"bzImage, boot protocol {major}.{minor:02d}" + (f", {version}" if version else "")
    return KernelInfo("bzimage", detail, f"{major}.{minor:02d}", version, cmdline_max)


def _elf_notes(head: bytes):
    """(name, type, desc) of every note in the ELF's PT_NOTE segments, bounds-checked."""
    cls = head[4]
    if cls == 2:
        (e_phoff,) = struct.unpack_from("<Q", head, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", head, 0x36)
        ph_fmt = "<IIQQQQQQ"  # type flags offset vaddr paddr filesz memsz align
    elif cls == 1:
        e_phoff = _u32(head, 0x1C)
        e_phentsize, e_phnum = struct.unpack_from("<HH", head, 0x2A)
        ph_fmt = "<IIIIIIII"  # type offset vaddr paddr filesz memsz flags align
    else:
        return
    if e_phentsize < struct.calcsize(ph_fmt):
        return
    count = 0
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if off + e_phentsize > len(head):
            return
        ph = struct.unpack_from(ph_fmt, head, off)
        p_type = ph[0]
        p_offset, p_filesz = (ph[2], ph[5]) if cls == 2 else (ph[1], ph[4])
        if p_type != PT_NOTE:
            continue
        pos, end = p_offset, min(p_offset + p_filesz, len(head))
        while pos + 12 <= end and count < MAX_NOTES:
            namesz, descsz, ntype = struct.unpack_from("<III", head, pos)
            name_at = pos + 12
            desc_at = name_at + namesz + (-namesz % 4)
            nxt = desc_at + descsz + (-descsz % 4)
            if nxt > end or nxt <= pos:
                break
            yield (
                head[name_at : name_at + namesz].rstrip(b"\0"),
                ntype,
                head[desc_at : desc_at + descsz],
            )
            pos, count = nxt, count + 1


def _pvh(head: bytes) -> KernelInfo | None:
    if head[:4] != b"\x7fELF" or len(head) < 0x40 or head[5] != 1:
        return None
    for name, ntype, desc in _elf_notes(head):
        if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
            entry = int.from_bytes(desc[:8], "little")
            bits = "ELF64" if head[4] == 2 else "ELF32"
            return KernelInfo(
                "pvh-elf", f"{bits} with a PVH entry at {entry:#x}", bits, entry=entry
            )
    return None


def _multiboot(path: Path, key: str, head: bytes) -> KernelInfo | None:
    for off in range(0, min(len(head), MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, check = struct.unpack_from("<III", head, off)
        if magic != MULTIBOOT_MAGIC or (magic + flags + check) & 0xFFFFFFFF:
            continue
        if head[:4] == b"\x7fELF" and head[4] == 2 and not flags & MULTIBOOT_AOUT_KLUDGE:
            raise UserError(
                f"{key}: {path} is a 64-bit ELF with a multiboot header at {off:#x} but no "
                "a.out kludge (flag bit 16): QEMU's multiboot loader only loads 32-bit ELFs "
                "('Cannot load x86-64 image'). Link it as elf32-i386, set the address "
                "fields with flag bit 16, or add a PVH note."
            )
        return KernelInfo("multiboot", f"multiboot v1 header at {off:#x}, flags {flags:#x}", "1")
    return None


def _read_head(path: Path, key: str) -> bytes:
    try:
        st = os.stat(path)
    except OSError as e:
        raise UserError(
            f"{key}: {path} does not exist or cannot be read ({e.strerror}). Give the path "
            "of a kernel file (relative paths are taken from the scenario's directory)."
        ) from e
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{key}: {path} is not a regular file. Give the path of a kernel file.")
    try:
        with open(path, "rb") as f:
            return f.read(READ_LIMIT)
    except OSError as e:
        raise UserError(f"{key}: cannot read {path} ({e.strerror}). Check its permissions.") from e


def inspect_kernel(path: Path, key: str = "image.kernel") -> KernelInfo:
    """What kind of kernel `path` is, or a UserError naming `key`, the bytes checked and
    the fix. Reads at most 1 MiB; never writes."""
    path = Path(path)
    head = _read_head(path, key)
    if len(head) >= HDRS_OFF + 6 and head[HDRS_OFF : HDRS_OFF + 4] == HDRS:
        return _bzimage(path, key, head)
    info = _pvh(head) or _multiboot(path, key, head)
    if info is not None:
        return info
    got = head[HDRS_OFF : HDRS_OFF + 4]
    checked = (
        f"{len(head)} bytes read; no 'HdrS' at 0x202 (found {got!r}), "
        + ("an ELF without a PVH note (type 18)" if head[:4] == b"\x7fELF" else "not an ELF")
        + ", no multiboot magic 0x1BADB002 with a valid checksum in the first 8 KiB"
    )
    raise _refuse(path, key, checked)


def check_append(append: str, key: str = "image.append", limit: int | None = None) -> str:
    """A kernel command line that is safe as QEMU's single `-append` argument.

    QEMU passes it through unchanged (it is one argv element, no shell), but the
    kernel reads it as one line of printable text: NUL ends it early, a newline or
    other control character is refused here rather than silently mangled."""
    if not isinstance(append, str):
        raise UserError(f"{key}: must be a string (the kernel command line), got {append!r}")
    for i, ch in enumerate(append):
        if ch == "\t":
            continue
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise UserError(
                f"{key}: character {ch!r} at position {i} is not allowed in a kernel command "
                "line (it is one line: no NUL, newline or other control characters). "
                "Separate parameters with spaces; in YAML use a plain or '>-' folded string."
            )
        if ord(ch) > 0x7E:
            raise UserError(
                f"{key}: non-ASCII character {ch!r} at position {i}: the kernel command line "
                "is ASCII. Remove it."
            )
    if limit is not None and len(append) > limit:
        raise UserError(
            f"{key}: the command line is {len(append)} bytes; this kernel accepts at most "
            f"{limit} (its boot header's cmdline_size). Shorten it."
        )
    return append


@dataclass(frozen=True)
class KernelSpec:
    """`image: {kind: kernel, kernel: PATH, initrd: PATH?, append: "..."}`."""

    kernel: Path
    initrd: Path | None = None
    append: str = ""

    @classmethod
    def from_mapping(cls, data: dict, base: Path | None = None, where: str = "image") -> KernelSpec:
        """From the scenario's `image:` mapping; relative paths are resolved from `base`."""
        known = {"kind", "kernel", "initrd", "append"}
        extra = sorted(set(data) - known)
        if extra:
            raise UserError(
                f"{where}.{extra[0]}: unknown key for kind 'kernel'; the keys are "
                "kernel, initrd, append."
            )
        if not isinstance(data.get("kernel"), str) or not data["kernel"]:
            raise UserError(f"{where}.kernel: required: the path of the kernel file to boot.")

        def path(v: str) -> Path:
            p = Path(v).expanduser()
            return p if p.is_absolute() or base is None else base / p

        initrd = data.get("initrd")
        if initrd is not None and (not isinstance(initrd, str) or not initrd):
            raise UserError(f"{where}.initrd: must be a path (a string), got {initrd!r}")
        append = data.get("append", "")
        check_append(append, f"{where}.append")
        return cls(path(data["kernel"]), path(initrd) if initrd else None, append)


@dataclass(frozen=True)
class KernelImage:
    """A validated user kernel: what QEMU is given, read-only."""

    kernel: Path
    initrd: Path | None
    append: str
    info: KernelInfo

    def qemu_args(self) -> list[str]:
        args = ["-kernel", str(self.kernel)]
        if self.initrd is not None:
            args += ["-initrd", str(self.initrd)]
        if self.append:
            args += ["-append", self.append]
        return args


def load_kernel(spec: KernelSpec, where: str = "image") -> KernelImage:
    """Validate a `kernel` image: the kernel file, the initrd (exists, readable) and the
    command line (against the kernel's own limit). Raises UserError."""
    info = inspect_kernel(spec.kernel, f"{where}.kernel")
    check_append(spec.append, f"{where}.append", info.cmdline_max)
    if spec.initrd is not None:
        head = _read_head(spec.initrd, f"{where}.initrd")
        if not head:
            raise UserError(f"{where}.initrd: {spec.initrd} is empty. Give an initramfs file.")
        if info.format == "multiboot" and "," in str(spec.initrd):
            # QEMU splits a multiboot -initrd at commas into several modules.
            raise UserError(
                f"{where}.initrd: {spec.initrd}: a multiboot kernel's initrd path must not "
                "contain ',' (QEMU reads it as a list of modules). Rename or link the file."
            )
    return KernelImage(spec.kernel, spec.initrd, spec.append, info)
