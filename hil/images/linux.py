"""The `linux` image kind: a bootable Linux built from Debian's own packages.

    LinuxSpec --> resolve (apt, simulated, on an empty dpkg status; remembered per
                  package set in <cache>/resolved/) --> key = hash(spec, versions, builder)
              --> cache hit?  yes: <cache>/<key>/, no apt, no network
                              no:  download .debs (<cache>/debs/) -> dpkg-deb -x
                                   -> kernel + modules -> libraries -> /init -> cpio.gz
                                   -> rename .tmp-<key>-XXXX to <key>
              --> LinuxImage (vmlinuz, initrd.img, the command line)

Nothing is installed on the host; the .debs are only unpacked into a temporary staging
directory that the build removes. docs/images.md is the user's page.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hil.errors import BuildError, InfraError, UserError
from hil.images import apt, cpio, elfdeps, initscript
from hil.images.kernelfile import check_append, inspect_kernel
from hil.images.modules import NAME_RE as MODULE_NAME_RE
from hil.images.modules import ModuleTree, read_module

SCHEMA = 1  # bump when the image layout changes without a source change
KERNEL_META = "linux-image-amd64"  # depends on exactly one linux-image-<abi>-amd64
USERLAND = "busybox-static"
# The kernel command line every linux image starts with (docs/images.md says why):
# the console on COM1; panic=-1 reboots at once on a panic, which -no-reboot turns
# into a QEMU exit; loglevel=7 keeps the kernel's messages (boot stages come from
# them); mitigations=off saves time under TCG, where there is nothing to mitigate.
BASE_APPEND = "console=ttyS0,115200 panic=-1 loglevel=7 mitigations=off"
# Left out of the image: documentation and translations.
SKIP_PREFIXES = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/locale/",
                 "usr/share/lintian/", "usr/share/bug/")  # fmt: skip
# ELF files here are programs: a library they need that no package has stops the build.
# Elsewhere (plugins, helper libraries under usr/lib) it is a warning.
PROGRAM_DIRS = ("bin/", "sbin/", "usr/bin/", "usr/sbin/", "usr/libexec/")
MIN_MEMORY_MB = 256
UNPACK_JOBS = 4
# gzip level 1: 1.8 s for fio's 88 MB initramfs against 5.0 s at level 6, for a file
# 10% larger (35 against 32 MB); the kernel unpacks either as fast.
GZIP_LEVEL = 1
_KEYS = ("kind", "packages", "modules", "init", "append", "shell")


@dataclass(frozen=True)
class LinuxSpec:
    """`image: {kind: linux, packages: [...], modules: [...], init: "...", append: "..."}`."""

    packages: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    init: str = ""  # shell commands (busybox sh) run by /init
    append: str = ""  # added to BASE_APPEND
    shell: bool = False  # after init:, an interactive shell on the console

    @classmethod
    def from_mapping(cls, data: dict, where: str = "image") -> LinuxSpec:
        """From the scenario's `image:` mapping; a UserError names the key and the fix."""
        extra = sorted(set(data) - set(_KEYS))
        if extra:
            raise UserError(
                f"{where}.{extra[0]}: unknown key for kind 'linux'; the keys are "
                "packages, modules, init, append, shell."
            )

        def strings(key: str) -> tuple[str, ...]:
            v = data.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                example = "fio" if key == "packages" else "nvme"
                raise UserError(f"{where}.{key}: must be a list of names, e.g. {key}: [{example}]")
            return tuple(v)

        init = data.get("init", "")
        if not isinstance(init, str):
            raise UserError(f"{where}.init: must be a string of shell commands (use `init: |`)")
        shell = data.get("shell", False)
        if not isinstance(shell, bool):
            raise UserError(f"{where}.shell: must be true or false")
        spec = cls(strings("packages"), strings("modules"), init, data.get("append", ""), shell)
        validate_spec(spec, where)
        return spec

    def to_json(self) -> dict:
        return {"packages": list(self.packages), "modules": list(self.modules),
                "init": self.init, "append": self.append, "shell": self.shell}  # fmt: skip


@dataclass(frozen=True)
class LinuxImage:
    kernel: Path  # the bzImage (vmlinuz)
    initrd: Path  # the initramfs (newc cpio, gzip)
    key: str
    kernel_version: str  # e.g. 6.1.0-57-amd64
    cached: bool
    packages: dict[str, str]  # every Debian package used -> version
    modules: tuple[str, ...]  # what /init loads, in order
    cmdline: str  # BASE_APPEND + the spec's append
    memory_mb: int  # the least guest memory (-m) this image boots in
    dir: Path = field(default=Path())

    def qemu_args(self) -> list[str]:
        return ["-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.cmdline]


def validate_spec(spec: LinuxSpec, where: str = "image") -> None:
    """What can be checked without apt: names and the command line. Package existence
    (apt) and module existence (after download) are checked by build_linux."""
    apt.check_names(spec.packages, f"{where}.packages")
    for i, m in enumerate(spec.modules):
        if not MODULE_NAME_RE.fullmatch(m):
            raise UserError(f"{where}.modules[{i}]: {m!r} is not a module name (e.g. nvme, e1000).")
    if "\0" in spec.init:
        raise UserError(f"{where}.init: contains a NUL character; give shell commands as text.")
    check_append(spec.append, f"{where}.append")


# --------------------------------------------------------------------------
# Cache layout


def cache_root(root: Path | None = None) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get("PXOS_HIL_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "pxos-hil") / "linux"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@functools.cache
def _builder_hash() -> str:
    # Once per process: the key describes the code that is running, even if the files
    # are edited while it runs.
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Resolved:
    """The exact Debian packages a spec's package set resolves to."""

    kernel: apt.Pkg  # linux-image-<abi>-amd64
    packages: tuple[apt.Pkg, ...]  # the closure of busybox-static + the spec's packages

    def to_json(self) -> dict:
        return {
            "kernel": list(self._t(self.kernel)),
            "packages": [self._t(p) for p in self.packages],
        }

    @staticmethod
    def _t(p: apt.Pkg) -> list[str]:
        return [p.name, p.version, p.arch]

    @classmethod
    def from_json(cls, d: dict) -> Resolved:
        return cls(apt.Pkg(*d["kernel"]), tuple(apt.Pkg(*p) for p in d["packages"]))


def _resolve_online(packages: tuple[str, ...], where: str) -> Resolved:
    try:
        meta = apt.candidates((KERNEL_META,), "kernel")[KERNEL_META]
    except UserError as e:
        raise InfraError(
            f"apt's package lists have no {KERNEL_META}, the kernel of every linux image: "
            "the lists are missing or old. Run `apt-get update` (as root)."
        ) from e
    deps = apt.depends_of(KERNEL_META, meta)
    m = re.search(r"(linux-image-[0-9][^ ,]*-amd64) \(= ([^)]+)\)", deps)
    if not m:
        raise InfraError(f"{KERNEL_META} {meta}: no linux-image-*-amd64 in its Depends ({deps})")
    closure = apt.closure(packages, f"{where}.packages", also=(USERLAND,))
    return Resolved(apt.Pkg(m.group(1), m.group(2)), tuple(closure))


def resolve(
    spec: LinuxSpec, root: Path, refresh: bool = False, where: str = "image"
) -> tuple[Resolved, bool]:
    """The package versions for `spec`, and whether they were remembered: they are kept
    per package set, so that a later build computes its key without apt; `refresh`
    asks apt again."""
    names = sorted(set(spec.packages))
    digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:24]
    memo = root / "resolved" / f"{digest}.json"
    if not refresh and memo.is_file():
        try:
            return Resolved.from_json(json.loads(memo.read_text())), True
        except (ValueError, KeyError, TypeError):
            pass  # a damaged memo is resolved again
    res = _resolve_online(spec.packages, where)
    _write_atomic(memo, json.dumps({**res.to_json(), "names": names, "at": time.time()}, indent=1))
    return res, False


def image_key(spec: LinuxSpec, res: Resolved) -> str:
    h = hashlib.sha256()
    for label, data in (
        ("schema", str(SCHEMA)),
        ("spec", json.dumps(spec.to_json(), sort_keys=True)),
        ("resolved", json.dumps(res.to_json(), sort_keys=True)),
        ("base_append", BASE_APPEND),
        ("builder", _builder_hash()),
    ):
        h.update(f"{label}\0{len(data)}\0{data}".encode())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------
# The build


class _Builder:
    """One build in a temporary directory; `run` leaves the finished files in `out`."""

    def __init__(self, spec: LinuxSpec, res: Resolved, root: Path, out: Path, where: str,
                 log: Callable[[str], None]):  # fmt: skip
        self.spec, self.res, self.root, self.out = spec, res, root, out
        self.where, self.log = where, log
        self.stage = out / "staging"
        self.tree = cpio.Tree()
        self.buildlog: list[str] = []

    def say(self, msg: str) -> None:
        self.buildlog.append(msg)
        self.log(msg)

    def run(self) -> dict:
        try:
            return self._run()
        except ValueError as e:  # the cpio writer refusing an entry
            raise BuildError(f"building the initramfs: {e}") from e

    def _run(self) -> dict:
        t0 = time.monotonic()
        debs = apt.download([self.res.kernel, *self.res.packages], self.root / "debs", self.say)
        self.say(f"unpacking {len(debs)} packages")
        userland, kroot = self.stage / "root", self.stage / "kernel"
        # dpkg-deb is a process per package, mostly waiting on xz and the disk: run a few
        # at once (measured: 10.6 s one by one for fio's 105 packages on 2 loaded cores).
        with ThreadPoolExecutor(max_workers=UNPACK_JOBS) as pool:
            jobs = [pool.submit(apt.unpack, deb, kroot if name == self.res.kernel.name else userland)
                    for name, deb in debs.items()]  # fmt: skip
            for job in jobs:
                job.result()
        version, vmlinuz = self._kernel(kroot)
        mods = self._modules(kroot / "lib" / "modules" / version)
        lib_dirs = self._userland(userland, debs)
        self._init(mods, lib_dirs)
        self.say(f"writing initramfs ({len(self.tree)} entries)")
        raw = cpio.write_gzip(self.tree, self.out / "initrd.img", GZIP_LEVEL)
        shutil.copyfile(vmlinuz, self.out / "vmlinuz")
        shutil.rmtree(self.stage)
        return {"kernel_version": version, "modules": [m for m, _ in mods], "initrd_raw": raw,
                "build_s": round(time.monotonic() - t0, 2)}  # fmt: skip

    def _kernel(self, kroot: Path) -> tuple[str, Path]:
        found = sorted((kroot / "boot").glob("vmlinuz-*"))
        if len(found) != 1:
            raise BuildError(f"{self.res.kernel.name}: expected one /boot/vmlinuz-*, found {found}")
        version = found[0].name.removeprefix("vmlinuz-")
        info = inspect_kernel(found[0], f"{self.res.kernel.name}: /boot/{found[0].name}")
        self.say(f"kernel {version}: {info.detail}")
        return version, found[0]

    def _modules(self, moddir: Path) -> list[tuple[str, str]]:
        order = ModuleTree(moddir).resolve(self.spec.modules, f"{self.where}.modules")
        self.say(f"modules: {' '.join(m.name for m in order) or '(none)'}")
        out = []
        for mod in order:
            dest = f"lib/modules/{moddir.name}/{mod.plain_relpath()}"
            self.tree.file(dest, read_module(moddir / mod.relpath))
            out.append((mod.name, dest))
        return out

    def _userland(self, base: Path, debs: dict[str, Path]) -> list[str]:
        self.say("collecting programs and libraries")
        self.tree.file("bin/busybox", base / "bin" / "busybox", 0o755)
        self.tree.symlink("bin/sh", "busybox")
        programs, others = [], []
        names = list(dict.fromkeys(self.spec.packages))
        for name in names:
            for rel in apt.contents(debs[name]):
                if rel.startswith(SKIP_PREFIXES) or rel in self.tree:
                    continue
                p = base / rel
                if p.is_symlink():
                    self.tree.symlink(rel, str(p.readlink()))
                elif p.is_dir():
                    self.tree.dir(rel)
                elif p.is_file():
                    self.tree.file(rel, p, stat.S_IMODE(p.stat().st_mode))
                    (programs if rel.startswith(PROGRAM_DIRS) else others).append(rel)
        closure = elfdeps.needed_closure(base, programs, tuple(others))
        for dest, real in sorted(closure.files.items()):
            if dest not in self.tree:
                self.tree.file(dest, base / real, stat.S_IMODE((base / real).stat().st_mode))
        for path, lib in closure.missing:
            self.say(f"warning: /{path} needs {lib}, which no package provides; it stays, unusable")
        self.say(f"{len(programs) + len(others)} files from {len(names)} packages, "
                 f"{len(closure.files)} libraries")  # fmt: skip
        return closure.lib_dirs

    def _init(self, mods: list[tuple[str, str]], lib_dirs: list[str]) -> None:
        t = self.tree
        for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc", "usr/bin", "usr/sbin", "sbin"):
            t.dir(d)
        t.device("dev/console", "c", 5, 1)
        t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        t.file("etc/group", b"root:x:0:\n")
        t.file(initscript.COMMANDS_PATH, (self.spec.init.rstrip("\n") + "\n").encode(), 0o755)
        t.file("init", initscript.render(mods, lib_dirs, self.spec.shell).encode(), 0o755)


def _load(final: Path, cached: bool) -> LinuxImage:
    meta = json.loads((final / "image.json").read_text())
    return LinuxImage(
        kernel=final / "vmlinuz",
        initrd=final / "initrd.img",
        key=meta["key"],
        kernel_version=meta["kernel_version"],
        cached=cached,
        packages=meta["packages"],
        modules=tuple(meta["modules"]),
        cmdline=meta["cmdline"],
        memory_mb=meta["memory_mb"],
        dir=final,
    )


def _memory_mb(initrd: Path, raw: int) -> int:
    # The compressed initrd and the unpacked rootfs both sit in RAM, plus the kernel.
    need = (initrd.stat().st_size + raw) / (1 << 20) + 160
    return max(MIN_MEMORY_MB, 64 * -(-int(need) // 64))


def build_linux(
    spec: LinuxSpec,
    cache_root_dir: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
    *,
    refresh: bool = False,
    where: str = "image",
) -> LinuxImage:
    """Build (or take from the cache) the Linux image for `spec`.

    UserError: a bad name, a package Debian does not have, a module this kernel lacks.
    InfraError: apt or dpkg-deb missing, no network for a first download, a broken
    package. `refresh` re-resolves package versions with apt (else the versions chosen
    for this package set the first time are kept, and a cached build needs no apt)."""
    validate_spec(spec, where)
    root = cache_root(cache_root_dir)
    res, remembered = resolve(spec, root, refresh, where)
    try:
        return _build(spec, res, root, where, log)
    except apt.VersionGone:
        if not remembered:
            raise
        # The archive dropped a version chosen earlier (a security update replaced it):
        # choose again, once.
        log("remembered package versions are gone from the archive; resolving again")
        res, _ = resolve(spec, root, True, where)
        return _build(spec, res, root, where, log)


def _build(
    spec: LinuxSpec, res: Resolved, root: Path, where: str, log: Callable[[str], None]
) -> LinuxImage:
    key = image_key(spec, res)
    final = root / key
    if (final / "image.json").is_file():
        log(f"linux image {key} cached")
        return _load(final, True)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        b = _Builder(spec, res, root, work, where, log)
        info = b.run()
        cmdline = check_append(f"{BASE_APPEND} {spec.append}".strip(), f"{where}.append",
                               inspect_kernel(work / "vmlinuz").cmdline_max)  # fmt: skip
        meta = {
            "key": key,
            "schema": SCHEMA,
            "kernel_version": info["kernel_version"],
            "kernel_package": [res.kernel.name, res.kernel.version],
            "packages": {p.name: p.version for p in (res.kernel, *res.packages)},
            "modules": info["modules"],
            "cmdline": cmdline,
            "memory_mb": _memory_mb(work / "initrd.img", info["initrd_raw"]),
            "initrd_bytes": (work / "initrd.img").stat().st_size,
            "initrd_raw_bytes": info["initrd_raw"],
            "spec": spec.to_json(),
            "build_s": info["build_s"],
        }
        (work / "build.log").write_text("\n".join(b.buildlog) + "\n")
        (work / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(work, final)
        except OSError:
            if not (final / "image.json").is_file():
                raise
            shutil.rmtree(work, ignore_errors=True)  # another build of the same key won
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"linux image {key} built in {info['build_s']} s")
    return _load(final, False)
