"""Build the bootable pxOS image: boot sector + microkernel (+ payload).

    recipe --> hash of every input --> cache hit?  yes: reuse it, run nothing
                                        no:  nasm, gcc, ld, objcopy in a temp dir
                                             -> measure -> disk image -> rename
           --> size budget check (every time, cached or not) --> Image

Outputs (one directory per input hash, docs/image.md):
    boot.bin     the 512-byte boot sector, hand-off block patched in
    kernel.elf   the microkernel, linked at 0x100000, with the PVH note (`-kernel`)
    kernel.bin   the flat binary cut from kernel.elf (what the boot sector loads)
    payload.bin  a copy of the recipe's payload, if any (`-initrd` on the PVH path)
    disk.img     boot.bin + kernel image + payload, padded to a whole MiB
    image.json   key, sizes, version, flags, tool versions, layout
    build.log    every command run and its output
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hil import host, janitor
from hil.errors import BuildError, InfraError, UserError
from hil.paths import REPO
from hil.vgpu import layout as vgpu_layout

# Where boot/ and microkernel/ are read from (tests point it at a copy).
SOURCE_ROOT = REPO

LOAD_ADDR = 0x100000  # the kernel's link address (microkernel/kernel.ld)
SECTOR = 512
PAGE = 4096
DISK_ALIGN = 1 << 20  # q35's AHCI will not boot a 512-byte disk; 1 MiB works
HANDOFF_MAGIC = b"pxHO"  # start of the hand-off block in boot.bin (boot/boot.asm)
MAX_SECTORS = 0xFFFF  # the hand-off `sectors` field is 16 bits
SCHEMA = 1  # bump when the image layout changes without a source change

CFLAGS = (
    "-std=gnu11",
    "-Oz",
    "-ffreestanding",
    "-nostdlib",
    "-fno-pic",
    "-fno-pie",
    "-mcmodel=small",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-ident",
    "-fno-common",
    "-falign-functions=1",
    "-falign-jumps=1",
    "-falign-loops=1",
    "-falign-labels=1",
    # Measured at 0.1.0 (docs/image.md): 8-byte stack alignment (no SSE in the kernel, so
    # nothing needs 16) and ABI-only data alignment drop padding; loop-invariant motion
    # (GIMPLE and RTL) hoisted constants into callee-saved registers that then had to be
    # saved and restored, in loops that are not hot.
    "-mpreferred-stack-boundary=3",
    "-malign-data=abi",
    "-fno-tree-loop-im",
    "-fno-move-loop-invariants",
    "-Wall",
    "-Wextra",
)
NASMFLAGS = ("-Ox",)
LDFLAGS = (
    "-nostdlib",
    "-static",
    "-n",
    "--no-warn-rwx-segments",
    "--build-id=none",
    "-z",
    "noexecstack",
)

# program -> (Debian package, arguments that print its version)
TOOLS = {
    "nasm": ("nasm", ("-v",)),
    "gcc": ("gcc", ("--version",)),
    "ld": ("binutils", ("--version",)),
    "objcopy": ("binutils", ("--version",)),
}


@dataclass(frozen=True)
class ImageRecipe:
    """What to build: extra -D NAME=VALUE defines and an optional payload file."""

    defines: tuple[tuple[str, str], ...] = ()  # e.g. (("PXOS_BOOT_FAULT", "1"),)
    # Bytes above the size budget a build with test-only instrumentation may use (a
    # planted boot delay): the budget is a promise about the shipped kernel.
    allowance: int = 0
    payload: Path | None = None  # appended after the kernel (BIOS) / -initrd (PVH)


@dataclass(frozen=True)
class SizeReport:
    """Kernel size.  ``counted`` -- what is held to ``budget`` -- is what is *loaded*: the
    file size of the PT_LOAD segment, which is exactly kernel.bin (the bytes the boot
    sector reads, and the bytes QEMU's PVH loader copies).  It is text + rodata + data
    + the alignment padding between them; .bss and the page tables take no bytes in the
    file, and the PVH note lies in no loaded segment."""

    text: int
    rodata: int
    data: int
    bss: int
    counted: int
    budget: int
    padding: int = 0
    note: int = 0

    def format(self) -> str:
        pct = 100 * self.counted / self.budget if self.budget else 0.0
        return "\n".join(
            [
                "microkernel size (bytes)",
                f"  text     {self.text:6d}   code (.text)",
                f"  rodata   {self.rodata:6d}   read-only data: strings, the GDT, tables (.rodata)",
                f"  data     {self.data:6d}   initialised variables (.data)",
                f"  padding  {self.padding:6d}   alignment gaps between those sections",
                f"  loaded   {self.counted:6d}   the sum: kernel.bin, the PT_LOAD file size; "
                f"budget {self.budget} ({pct:.0f}%)",
                f"  bss      {self.bss:6d}   not loaded, zeroed: stack, IDT, PVH page tables",
                f"  note     {self.note:6d}   not loaded: the PVH ELF note (in kernel.elf only)",
            ]
        )


@dataclass(frozen=True)
class Image:
    key: str
    dir: Path
    disk: Path
    elf: Path
    flat: Path
    payload: Path | None
    size: SizeReport
    version: str
    cached: bool
    build_log: Path


# --------------------------------------------------------------------------
# Inputs and the cache key


def _cache_root(cache_root: Path | None) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    env = os.environ.get("PXOS_HIL_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "pxos-hil" / "images"


def _source_files(root: Path) -> list[Path]:
    files = []
    for sub in ("boot", "microkernel"):
        d = root / sub
        if not d.is_dir():
            raise InfraError(f"image sources missing: {d} is not a directory")
        files += [p for p in sorted(d.rglob("*")) if p.is_file()]
    return files


def read_version(root: Path | None = None) -> str:
    """The kernel version, from microkernel/version.h (its only definition)."""
    path = (root or SOURCE_ROOT) / "microkernel" / "version.h"
    m = re.search(r'#define\s+PXOS_VERSION\s+"([^"]+)"', path.read_text())
    if not m:
        raise BuildError(f'{path}: no `#define PXOS_VERSION "x.y.z"` line')
    return m.group(1)


def read_budget(root: Path | None = None) -> int:
    """max_bytes from microkernel/budget.yaml."""
    import yaml

    path = (root or SOURCE_ROOT) / "microkernel" / "budget.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
        value = doc["max_bytes"]
    except (OSError, yaml.YAMLError, TypeError, KeyError) as e:
        raise BuildError(f"{path}: cannot read the size budget (`max_bytes: N`): {e}") from e
    if not isinstance(value, int) or value <= 0:
        raise BuildError(f"{path}: max_bytes must be a positive integer, got {value!r}")
    return value


def _find_tools() -> dict[str, str]:
    found = {}
    for prog, (pkg, _) in TOOLS.items():
        path = shutil.which(prog)
        if path is None:
            raise InfraError(
                f"`{prog}` not found on PATH: building the pxOS image needs it. "
                f"Install the Debian package `{pkg}` (apt-get install {pkg})."
            )
        found[prog] = path
    return found


def _tool_versions(tools: dict[str, str], root: Path, log: list[str]) -> dict[str, str]:
    """First line of each tool's version output.

    Asking a tool costs a process, and an unchanged re-run must run none, so
    the answers are kept in <cache>/tools.json keyed by the binary's real
    path, size and mtime: a package upgrade replaces the file and re-asks.
    """
    memo_path = root / "tools.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    versions, changed = {}, False
    for prog, path in tools.items():
        real = os.path.realpath(path)
        st = os.stat(real)
        stamp = f"{real}:{st.st_size}:{st.st_mtime_ns}"
        if memo.get(stamp) is None:
            out = _run([path, *TOOLS[prog][1]], log, what=f"{prog} version")
            memo[stamp] = (out.splitlines() or ["?"])[0].strip()
            changed = True
        versions[prog] = memo[stamp]
    if changed:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tools.", suffix=".json", dir=root)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(memo, indent=1, sort_keys=True))
        os.replace(tmp, memo_path)
    return versions


def _defines(recipe: ImageRecipe) -> list[str]:
    out = []
    for name, value in recipe.defines:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not re.fullmatch(
            r"[A-Za-z0-9_.+-]*", value
        ):
            raise UserError(f"image define {name}={value!r}: use NAME=VALUE with [A-Za-z0-9_.+-]")
        out.append(f"-D{name}={value}")
    return out


def _payload_bytes(recipe: ImageRecipe) -> bytes | None:
    if recipe.payload is None:
        return None
    try:
        return Path(recipe.payload).read_bytes()
    except OSError as e:
        raise UserError(f"image payload {recipe.payload}: cannot read it ({e.strerror})") from e


def _key(root: Path, defines: list[str], payload: bytes | None, tools: dict[str, str]) -> str:
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    add("schema", str(SCHEMA).encode())
    for path in _source_files(root):
        add("src:" + path.relative_to(root).as_posix(), path.read_bytes())
    add("builder", Path(__file__).read_bytes())
    add("generated:vgpu_layout.h", vgpu_layout.c_header().encode())
    add("flags", json.dumps([CFLAGS, NASMFLAGS, LDFLAGS, defines]).encode())
    add("tools", json.dumps(tools, sort_keys=True).encode())
    add("payload", b"-" if payload is None else hashlib.sha256(payload).digest())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------
# Running tools


def _run(cmd: list[str], log: list[str], *, what: str, cwd: Path | None = None) -> str:
    log.append("$ " + " ".join(cmd))
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise InfraError(f"{what}: cannot run {cmd[0]}: {e}") from e
    out = (p.stdout + p.stderr).rstrip()
    if out:
        log.append(out)
    if p.returncode != 0:
        tail = "\n".join(out.splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {p.returncode}):\n{tail}")
    return p.stdout + p.stderr


# --------------------------------------------------------------------------
# ELF inspection (pyelftools)


def measure(elf: Path, budget: int) -> SizeReport:
    """What the loader loads (the PT_LOAD segments' file size: ``counted``), and by
    section kind what it is made of.  Sections outside every PT_LOAD (the PVH note, the
    symbol table) are not loaded; NOBITS sections (.bss, the page tables) have no bytes."""
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    text = rodata = data = bss = note = 0
    with open(elf, "rb") as f:
        ef = ELFFile(f)
        loaded = sum(s["p_filesz"] for s in ef.iter_segments() if s["p_type"] == "PT_LOAD")
        for sec in ef.iter_sections():
            flags, size = sec["sh_flags"], sec["sh_size"]
            if sec["sh_type"] == "SHT_NOTE" and not flags & SH_FLAGS.SHF_ALLOC:
                note += size
            if not flags & SH_FLAGS.SHF_ALLOC or size == 0:
                continue
            if sec["sh_type"] == "SHT_NOBITS":
                bss += size
            elif flags & SH_FLAGS.SHF_EXECINSTR:
                text += size
            elif flags & SH_FLAGS.SHF_WRITE:
                data += size
            else:
                rodata += size
    padding = loaded - (text + rodata + data)
    if padding < 0:
        raise BuildError(f"{elf}: an allocated section lies outside the PT_LOAD segment")
    return SizeReport(text, rodata, data, bss, loaded, budget, padding, note)


def _symbol(elf: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        syms = symtab.get_symbol_by_name(name) if symtab else None
        if not syms:
            raise BuildError(f"{elf}: symbol {name} missing (microkernel/kernel.ld defines it)")
        return syms[0]["st_value"]


def pvh_entry(elf: Path) -> int | None:
    """The XEN_ELFNOTE_PHYS32_ENTRY address from the ELF's PT_NOTE, or None."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] != "PT_NOTE":
                continue
            for note in seg.iter_notes():
                if note["n_name"] == "Xen" and note["n_type"] == 18:
                    desc = note["n_descdata"]
                    return int.from_bytes(desc[:8].ljust(8, b"\0"), "little")
    return None


# --------------------------------------------------------------------------
# The build


def _check_budget(size: SizeReport, budget_file: Path) -> None:
    if size.counted > size.budget:
        raise BuildError(
            f"microkernel loads {size.counted} bytes (text {size.text} + rodata {size.rodata} "
            f"+ data {size.data} + padding {size.padding}), over its budget of {size.budget} "
            "bytes by "
            f"{size.counted - size.budget}. Make it smaller, or raise max_bytes in "
            f"{budget_file} (pxOS promises ~2 KB)."
        )


def _compile(
    src: Path,
    work: Path,
    defines: list[str],
    tools: dict[str, str],
    log: list[str],
    progress: Callable[[str], None],
):
    """Assemble/compile/link into `work`; returns (boot.bin, kernel.elf, kernel.bin)."""
    boot_dir, mk = src / "boot", src / "microkernel"
    # Headers generated from the single sources of truth (hil/vgpu/layout.py).
    gen = work / "generated"
    gen.mkdir()
    (gen / "vgpu_layout.h").write_text(vgpu_layout.c_header())
    inc = [f"-I{boot_dir}/", f"-I{mk}/", f"-I{gen}/"]
    boot_bin = work / "boot.bin"
    progress("assembling boot sector")
    _run(
        [tools["nasm"], *NASMFLAGS, "-f", "bin", *inc, *defines, "-o", str(boot_bin),
         str(boot_dir / "boot.asm")],
        log, what="assembling boot/boot.asm",
    )  # fmt: skip
    progress("compiling microkernel")
    objs = []
    for asm in sorted(mk.glob("*.asm")):
        obj = work / (asm.stem + ".asm.o")
        _run(
            [tools["nasm"], *NASMFLAGS, "-f", "elf64", *inc, *defines, "-o", str(obj), str(asm)],
            log, what=f"assembling {asm.relative_to(src)}",
        )  # fmt: skip
        objs.append(str(obj))
    for c in sorted(mk.glob("*.c")):
        obj = work / (c.stem + ".o")
        _run(
            [tools["gcc"], *CFLAGS, *inc, *defines, "-c", "-o", str(obj), str(c)],
            log, what=f"compiling {c.relative_to(src)}",
        )  # fmt: skip
        objs.append(str(obj))
    elf, flat = work / "kernel.elf", work / "kernel.bin"
    _run(
        [tools["ld"], *LDFLAGS, "-T", str(mk / "kernel.ld"), "-o", str(elf), *objs],
        log, what="linking microkernel/kernel.elf",
    )  # fmt: skip
    _run([tools["objcopy"], "-O", "binary", str(elf), str(flat)], log, what="objcopy kernel.bin")
    return boot_bin, elf, flat


def _assemble_disk(work: Path, boot_bin: Path, elf: Path, flat: Path, payload: bytes | None):
    """Patch the hand-off block and write disk.img; returns the layout for image.json."""
    boot = bytearray(boot_bin.read_bytes())
    if len(boot) != SECTOR or boot[-2:] != b"\x55\xaa":
        raise BuildError(f"boot/boot.asm: boot sector is {len(boot)} bytes / bad signature")
    hb = boot.find(HANDOFF_MAGIC)
    if hb < 0:
        raise BuildError("boot/boot.asm: hand-off block (magic 'pxHO') not found")
    kernel = flat.read_bytes()
    entry = _symbol(elf, "_start")
    if entry != LOAD_ADDR:
        raise BuildError(f"kernel.elf: _start is at {entry:#x}, must be {LOAD_ADDR:#x}")
    # The boot sector loads a memory image of [LOAD_ADDR, bss end): the zero
    # sectors after the flat binary are the kernel's .bss.  A payload follows
    # on the next page boundary (over the PVH-only page tables).
    bss_end = _symbol(elf, "__bss_end")
    image_len = -(-(bss_end - LOAD_ADDR) // PAGE) * PAGE
    body = kernel.ljust(image_len, b"\0")
    payload_addr = 0
    if payload is not None:
        payload_addr = LOAD_ADDR + image_len
        body += payload
    sectors = -(-len(body) // SECTOR)
    if sectors > MAX_SECTORS:
        limit = MAX_SECTORS * SECTOR - image_len
        raise UserError(
            f"payload is {len(payload or b'')} bytes; the BIOS boot path loads at most "
            f"{limit} bytes of payload (docs/image.md)"
        )
    struct.pack_into("<HHII", boot, hb + 4, sectors, 1, payload_addr, len(payload or b""))
    (work / "boot.bin").write_bytes(boot)
    disk = bytes(boot) + body
    disk += b"\0" * (-len(disk) % DISK_ALIGN)
    (work / "disk.img").write_bytes(disk)
    if payload is not None:
        (work / "payload.bin").write_bytes(payload)
    return {
        "handoff_offset": hb,
        "handoff_addr": 0x7C00 + hb,
        "sectors": sectors,
        "kernel_image_bytes": image_len,
        "payload_addr": payload_addr,
        "payload_size": len(payload or b""),
        "disk_bytes": len(disk),
        "pvh_entry": pvh_entry(elf),
    }


def _load(final: Path, key: str, budget: int, cached: bool) -> Image:
    meta = json.loads((final / "image.json").read_text())
    s = meta["size"]
    size = SizeReport(
        s["text"],
        s["rodata"],
        s["data"],
        s["bss"],
        s["counted"],
        budget,
        s.get("padding", 0),
        s.get("note", 0),
    )
    payload = final / "payload.bin"
    return Image(
        key=key,
        dir=final,
        disk=final / "disk.img",
        elf=final / "kernel.elf",
        flat=final / "kernel.bin",
        payload=payload if payload.exists() else None,
        size=size,
        version=meta["version"],
        cached=cached,
        build_log=final / "build.log",
    )


# --------------------------------------------------------------------------
# Prebuilt images, for a host without the compilers (a GPU host reached by a bundle:
# tools/gpu-bundle, docs/gpu-host.md).  There the cache key cannot name the tools'
# versions, so prebuilt images are keyed by everything else: sources, builder, flags,
# defines and payload.  They are only ever used where the tools are missing.

PREBUILT_ENV = host.PREBUILT_ENV


def source_key(recipe: ImageRecipe) -> str:
    """The key of `recipe`'s image among prebuilt ones (tool versions left out)."""
    return "src-" + _key(SOURCE_ROOT, _defines(recipe), _payload_bytes(recipe), {})


def export_prebuilt(recipe: ImageRecipe, dest: Path, **kw) -> Path:
    """Build `recipe` here and copy its image into `dest`/<source key>/ (for a bundle)."""
    image = build(recipe, **kw)
    out = Path(dest) / source_key(recipe)
    if not (out / "image.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest))
        for f in image.dir.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        os.rename(tmp, out)
    return out


def _prebuilt(recipe: ImageRecipe, missing: InfraError, budget: int, log) -> Image:
    where = os.environ.get(PREBUILT_ENV)
    if not where:
        raise missing
    key = source_key(recipe)
    final = Path(where) / key
    if not (final / "image.json").is_file():
        raise InfraError(
            f"{missing} No prebuilt image either: {PREBUILT_ENV}={where} has no {key}/ for "
            "this recipe (its sources, defines or payload differ from the bundle's). Make the "
            "bundle again from this checkout with tools/gpu-bundle, naming this scenario."
        )
    image = _load(final, key, budget, cached=True)
    log(f"image {key} prebuilt ({where})")
    _check_budget(image.size, SOURCE_ROOT / "microkernel" / "budget.yaml")
    return image


def image_key(recipe: ImageRecipe, *, cache_root: Path | None = None) -> str:
    """The cache key `build` would use for `recipe`, without building anything."""
    tools = _find_tools()
    versions = _tool_versions(tools, _cache_root(cache_root), [])
    return _key(SOURCE_ROOT, _defines(recipe), _payload_bytes(recipe), versions)


def build(
    recipe: ImageRecipe,
    *,
    cache_root: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
    budget: int | None = None,
) -> Image:
    """Build (or fetch from the cache) the image for `recipe`.

    Raises InfraError when a tool is missing, BuildError when a tool fails or
    the kernel is over its size budget (`budget` overrides budget.yaml),
    UserError for a bad define or an unreadable payload.
    """
    src = SOURCE_ROOT
    root = _cache_root(cache_root)
    budget_file = src / "microkernel" / "budget.yaml"
    if budget is None:
        budget = read_budget(src) + recipe.allowance
    try:
        tools = _find_tools()
    except InfraError as missing:
        return _prebuilt(recipe, missing, budget, log)
    defines = _defines(recipe)
    payload = _payload_bytes(recipe)
    cmdlog: list[str] = []
    versions = _tool_versions(tools, root, cmdlog)
    key = _key(src, defines, payload, versions)
    final = root / key

    if (final / "image.json").exists():
        image = _load(final, key, budget, cached=True)
        log(f"image {key} cached")
        log(f"kernel size {image.size.counted}/{budget} bytes")
        _check_budget(image.size, budget_file)
        return image

    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        janitor.claim(work)  # a SIGKILLed build's work dir is removed by the next hil
        version = read_version(src)
        boot_bin, elf, flat = _compile(src, work, defines, tools, cmdlog, log)
        size = measure(elf, budget)
        log(f"kernel size {size.counted}/{budget} bytes")
        log("writing disk image")
        layout = _assemble_disk(work, boot_bin, elf, flat, payload)
        meta = {
            "key": key,
            "version": version,
            "size": {
                "text": size.text,
                "rodata": size.rodata,
                "data": size.data,
                "bss": size.bss,
                "counted": size.counted,
                "padding": size.padding,
                "note": size.note,
            },
            "layout": layout,
            "defines": defines,
            "flags": {"cflags": CFLAGS, "nasmflags": NASMFLAGS, "ldflags": LDFLAGS},
            "tools": versions,
        }
        (work / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
        (work / "build.log").write_text("\n".join(cmdlog) + "\n")
        for leftover in work.glob("*.o"):
            leftover.unlink()
        janitor.release(work)
        try:
            os.rename(work, final)
        except OSError:
            # Another process finished the same key first: use its result.
            if not (final / "image.json").exists():
                raise
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    image = _load(final, key, budget, cached=False)
    _check_budget(image.size, budget_file)
    return image
