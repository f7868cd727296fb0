"""Unit tests of the image kinds `kernel` and `linux` (hil/images/): the newc writer,
kernel file validation, module dependencies, the ELF library closure, the init and
the spec. The builds and boots of real Debian packages are in
tests/integration/test_linux_boot.py."""

from __future__ import annotations

import gzip
import io
import lzma
import re
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from hil import image
from hil.errors import BuildError, UserError
from hil.image import ImageRecipe
from hil.images import cpio, elfdeps, initscript
from hil.images.kernelfile import KernelSpec, check_append, inspect_kernel, load_kernel
from hil.images.linux import LinuxSpec, Resolved, image_key
from hil.images.modules import ModuleTree, canonical, read_module

DOCS = Path(__file__).resolve().parent.parent / "docs"


# --------------------------------------------------------------------------
# newc cpio: read back with an independent parser written from the format spec


def parse_newc(data: bytes) -> list[dict]:
    out, pos = [], 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, check = f
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        body = name_start + namesize
        body += -body % 4
        content = data[body : body + size]
        pos = body + size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append(dict(ino=ino, mode=mode, uid=uid, gid=gid, nlink=nlink, mtime=mtime,
                        name=name, data=content, rdev=(rmaj, rmin), check=check))  # fmt: skip


def sample_tree(tmp_path: Path) -> cpio.Tree:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 4099 + b"odd")  # not a multiple of 4
    t = cpio.Tree()
    t.file("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    t.file("/usr/lib/x/big.bin", big)
    t.symlink("bin/sh", "busybox")
    t.device("dev/console", "c", 5, 1)
    t.dir("proc")
    t.file("a", b"")
    return t


def test_newc_round_trip(tmp_path):
    buf = io.BytesIO()
    n = cpio.write(sample_tree(tmp_path), buf)
    data = buf.getvalue()
    assert n == len(data) and len(data) % 4 == 0
    entries = {e["name"]: e for e in parse_newc(data)}
    assert set(entries) == {"a", "bin", "bin/sh", "dev", "dev/console", "proc", "usr",
                            "usr/bin", "usr/bin/tool", "usr/lib", "usr/lib/x", "usr/lib/x/big.bin"}  # fmt: skip
    tool = entries["usr/bin/tool"]
    assert tool["data"] == b"#!/bin/sh\necho hi\n" and tool["mode"] == stat.S_IFREG | 0o755
    assert entries["usr/lib/x/big.bin"]["data"] == (tmp_path / "big.bin").read_bytes()
    sh = entries["bin/sh"]
    assert stat.S_ISLNK(sh["mode"]) and sh["data"] == b"busybox"
    con = entries["dev/console"]
    assert stat.S_ISCHR(con["mode"]) and con["rdev"] == (5, 1) and con["data"] == b""
    assert stat.S_ISDIR(entries["usr/lib"]["mode"]) and entries["usr/lib"]["nlink"] == 2
    assert {e["uid"] for e in entries.values()} == {0} and {
        e["mtime"] for e in entries.values()
    } == {0}
    assert len({e["ino"] for e in entries.values()}) == len(entries)


def test_newc_parents_come_before_children(tmp_path):
    names = [e["name"] for e in parse_newc(_bytes(sample_tree(tmp_path)))]
    for i, name in enumerate(names):
        parent = name.rpartition("/")[0]
        if parent:
            assert parent in names[:i], f"{name} before its directory {parent}"


def _bytes(tree: cpio.Tree) -> bytes:
    buf = io.BytesIO()
    cpio.write(tree, buf)
    return buf.getvalue()


def test_newc_is_reproducible_and_gzip_too(tmp_path):
    assert _bytes(sample_tree(tmp_path)) == _bytes(sample_tree(tmp_path))
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    cpio.write_gzip(sample_tree(tmp_path), a)
    cpio.write_gzip(sample_tree(tmp_path), b)
    assert a.read_bytes() == b.read_bytes()
    assert gzip.decompress(a.read_bytes()) == _bytes(sample_tree(tmp_path))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_newc_is_read_by_gnu_cpio(tmp_path):
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=_bytes(sample_tree(tmp_path)),
                             capture_output=True, check=True).stdout.decode().split()  # fmt: skip
    assert "usr/lib/x/big.bin" in listing and "dev/console" in listing


@pytest.mark.parametrize("bad", ["", "/", "a/../b", ".."])
def test_newc_refuses_bad_paths(bad):
    with pytest.raises(ValueError):
        cpio.Tree().file(bad, b"x")


def test_newc_refuses_duplicates_and_files_as_directories():
    t = cpio.Tree()
    t.file("etc/x", b"1")
    with pytest.raises(ValueError, match="twice"):
        t.file("etc/x", b"2")
    with pytest.raises(ValueError, match="not a directory"):
        t.file("etc/x/y", b"3")
    t.file("etc/x", b"2", replace=True)
    t.dir("etc")  # a directory again is fine
    assert t.get("etc/x").data == b"2"


# --------------------------------------------------------------------------
# Kernel files


def bzimage_header(proto=0x020F, loadflags=0x01, version="6.1.0-test (me) #1", cmdline=2047):
    head = bytearray(0x4000)
    head[0x1F1] = 27  # setup_sects
    head[0x1FE:0x200] = b"\x55\xaa"
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, proto)
    struct.pack_into("<H", head, 0x20E, 0x1000 - 0x200)
    head[0x211] = loadflags
    struct.pack_into("<I", head, 0x238, cmdline)
    v = version.encode() + b"\0"
    head[0x1000 : 0x1000 + len(v)] = v
    return bytes(head)


def test_bzimage_is_recognised(tmp_path):
    k = tmp_path / "bzImage"
    k.write_bytes(bzimage_header())
    info = inspect_kernel(k)
    assert info.format == "bzimage" and info.version == "2.15"
    assert info.kernel_version == "6.1.0-test (me) #1" and info.cmdline_max == 2047
    assert "boot protocol 2.15" in info.detail


def test_zimage_is_refused_with_the_fix(tmp_path):
    k = tmp_path / "zImage"
    k.write_bytes(bzimage_header(loadflags=0))
    with pytest.raises(UserError, match=r"image.kernel: .*LOADED_HIGH clear.*make bzImage"):
        inspect_kernel(k)


def test_a_text_file_is_refused_naming_what_was_checked(tmp_path):
    k = tmp_path / "notes.txt"
    k.write_text("hello, I am not a kernel\n" * 100)
    with pytest.raises(UserError) as e:
        inspect_kernel(k, "image.kernel")
    msg = str(e.value)
    assert msg.startswith(f"image.kernel: {k} is not a kernel QEMU can boot")
    for what in ("'HdrS' at 0x202", "not an ELF", "0x1BADB002", "bzImage", "PVH"):
        assert what in msg


def test_missing_kernel_and_directory_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        inspect_kernel(tmp_path / "nope")
    with pytest.raises(UserError, match="not a regular file"):
        inspect_kernel(tmp_path)


@pytest.fixture(scope="module")
def pxos_elf(tmp_path_factory) -> Path:
    """The pxOS microkernel as hil/image.py builds it: an ELF64 with a PVH note."""
    return image.build(ImageRecipe(), cache_root=tmp_path_factory.mktemp("img")).elf


def test_pvh_elf_from_the_pxos_build(pxos_elf):
    info = inspect_kernel(pxos_elf)
    assert info.format == "pvh-elf" and info.version == "ELF64"
    assert info.entry == image.pvh_entry(pxos_elf)


def test_elf_without_pvh_note_is_refused(tmp_path):
    exe = Path(shutil.which("true")).resolve()
    with pytest.raises(UserError, match="an ELF without a PVH note"):
        inspect_kernel(exe)


def multiboot_image(offset=0x40, flags=0x3, prefix=b"") -> bytes:
    head = bytearray(prefix.ljust(0x2000, b"\0"))
    check = (-(0x1BADB002 + flags)) & 0xFFFFFFFF
    struct.pack_into("<III", head, offset, 0x1BADB002, flags, check)
    return bytes(head)


def test_multiboot_header_is_found(tmp_path):
    k = tmp_path / "mb.bin"
    k.write_bytes(multiboot_image(offset=0x1000))
    info = inspect_kernel(k)
    assert info.format == "multiboot" and "0x1000" in info.detail


def test_multiboot_with_a_bad_checksum_or_beyond_8k_is_refused(tmp_path):
    k = tmp_path / "mb.bin"
    raw = bytearray(multiboot_image())
    raw[0x48] ^= 1
    k.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="not a kernel"):
        inspect_kernel(k)
    k.write_bytes(b"\0" * 0x2000 + multiboot_image(offset=0))
    with pytest.raises(UserError, match="not a kernel"):
        inspect_kernel(k)


def test_multiboot_in_a_64bit_elf_needs_the_aout_kludge(tmp_path):
    elf64 = b"\x7fELF\x02\x01\x01" + b"\0" * 57  # header only, no program headers
    k = tmp_path / "mb64.elf"
    k.write_bytes(multiboot_image(prefix=elf64))
    with pytest.raises(UserError, match="64-bit ELF with a multiboot header.*a.out kludge"):
        inspect_kernel(k)
    k.write_bytes(multiboot_image(prefix=elf64, flags=0x10003))
    assert inspect_kernel(k).format == "multiboot"


def test_truncated_or_hostile_elf_headers_are_refused_not_crashed(tmp_path):
    k = tmp_path / "bad.elf"
    # e_phoff far past the end, huge e_phnum
    hdr = bytearray(b"\x7fELF\x02\x01\x01" + b"\0" * 57)
    struct.pack_into("<Q", hdr, 0x20, 1 << 40)
    struct.pack_into("<HH", hdr, 0x36, 56, 0xFFFF)
    k.write_bytes(bytes(hdr))
    with pytest.raises(UserError, match="not a kernel"):
        inspect_kernel(k)
    # a PT_NOTE whose note claims a huge name size
    hdr = bytearray(0x200)
    hdr[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<Q", hdr, 0x20, 0x40)
    struct.pack_into("<HH", hdr, 0x36, 56, 1)
    struct.pack_into("<IIQQQQQQ", hdr, 0x40, 4, 0, 0x100, 0, 0, 0x40, 0x40, 4)
    struct.pack_into("<III", hdr, 0x100, 0xFFFFFFF0, 4, 18)
    k.write_bytes(bytes(hdr))
    with pytest.raises(UserError, match="an ELF without a PVH note"):
        inspect_kernel(k)


@pytest.mark.parametrize(
    "bad,why",
    [("console=ttyS0\nquiet", "'\\\\n' at position 13"), ("a\0b", "'\\\\x00'"),
     ("x\rz", "'\\\\r'"), ("root=/dev/sda é", "non-ASCII")],
)  # fmt: skip
def test_append_refuses_control_and_non_ascii(bad, why):
    with pytest.raises(UserError, match=why):
        check_append(bad, "image.append")


def test_append_length_is_held_to_the_kernels_limit(tmp_path):
    assert check_append("console=ttyS0 panic=-1\tquiet") == "console=ttyS0 panic=-1\tquiet"
    k = tmp_path / "bzImage"
    k.write_bytes(bzimage_header(cmdline=20))
    with pytest.raises(
        UserError, match="image.append: the command line is 24 bytes; .* at most 20"
    ):
        load_kernel(KernelSpec(k, None, "console=ttyS0 panic=-1 x"))


def test_kernel_spec_from_mapping(tmp_path):
    k = tmp_path / "bzImage"
    k.write_bytes(bzimage_header())
    spec = KernelSpec.from_mapping({"kind": "kernel", "kernel": "bzImage", "append": "quiet"},
                                   base=tmp_path)  # fmt: skip
    img = load_kernel(spec)
    assert img.qemu_args() == ["-kernel", str(k), "-append", "quiet"]
    before = k.read_bytes()
    assert k.read_bytes() == before  # only read
    with pytest.raises(UserError, match="image.initrd: .* does not exist"):
        load_kernel(KernelSpec.from_mapping({"kernel": str(k), "initrd": "nope.img"}, tmp_path))
    with pytest.raises(UserError, match="image.kernal: unknown key"):
        KernelSpec.from_mapping({"kernal": "x"})
    with pytest.raises(UserError, match="image.kernel: required"):
        KernelSpec.from_mapping({"kind": "kernel"})
    (tmp_path / "empty.img").write_bytes(b"")
    with pytest.raises(UserError, match="image.initrd: .* is empty"):
        load_kernel(KernelSpec(k, tmp_path / "empty.img"))


def test_multiboot_initrd_path_with_a_comma_is_refused(tmp_path):
    k = tmp_path / "mb.bin"
    k.write_bytes(multiboot_image())
    rd = tmp_path / "a,b.img"
    rd.write_bytes(b"x")
    with pytest.raises(UserError, match="must not contain ','"):
        load_kernel(KernelSpec(k, rd))


# --------------------------------------------------------------------------
# Kernel modules: real ELF objects with a .modinfo section, built with gcc


def make_module(path: Path, depends: str, compress: str = "") -> None:
    src = path.with_suffix(".c")
    src.write_text(
        '__attribute__((section(".modinfo"), used)) static const char info[] = '
        f'"license=GPL\\0depends={depends}\\0name={path.name.split(".")[0]}";\n'
    )
    obj = path.parent / (path.name.split(".")[0] + ".o")
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    data = obj.read_bytes()
    obj.unlink()
    src.unlink()
    if compress == "xz":
        data = lzma.compress(data, format=lzma.FORMAT_XZ)
    elif compress == "gz":
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture
def modtree(tmp_path) -> Path:
    d = tmp_path / "lib" / "modules" / "6.1.0-test"
    (d / "kernel" / "drivers").mkdir(parents=True)
    k = d / "kernel" / "drivers"
    make_module(k / "nvme.ko", "nvme-core")
    make_module(k / "nvme-core.ko.xz", "crc64_rocksoft,t10-pi", "xz")
    make_module(k / "t10-pi.ko.gz", "crc64_rocksoft", "gz")
    make_module(k / "crc64_rocksoft.ko", "")
    make_module(k / "e1000.ko", "")
    (d / "modules.builtin").write_text("kernel/drivers/usb/host/xhci-hcd.ko\n")
    return d


def test_modules_are_ordered_dependencies_first(modtree):
    order = [m.name for m in ModuleTree(modtree).resolve(("nvme", "e1000", "t10_pi"))]
    assert order == ["crc64_rocksoft", "t10_pi", "nvme_core", "nvme", "e1000"]


def test_compressed_modules_are_decompressed(modtree):
    tree = ModuleTree(modtree)
    core = tree.by_name["nvme_core"]
    assert core.relpath.endswith(".ko.xz") and core.plain_relpath().endswith("nvme-core.ko")
    assert read_module(modtree / core.relpath)[:4] == b"\x7fELF"
    assert tree.depends(core) == ["crc64_rocksoft", "t10_pi"]


def test_builtin_module_loads_nothing_and_unknown_is_named(modtree):
    tree = ModuleTree(modtree)
    assert tree.resolve(("xhci_hcd", "xhci-hcd")) == []
    with pytest.raises(UserError) as e:
        tree.resolve(("e1000", "nvmee"), "image.modules")
    assert "image.modules[1]: this kernel (6.1.0-test) has no module 'nvmee'" in str(e.value)
    assert "Close names: nvme" in str(e.value)


def test_a_missing_dependency_names_who_needs_it(modtree):
    make_module(modtree / "kernel" / "drivers" / "x.ko", "gone")
    with pytest.raises(UserError, match=r"image.modules\[0\] \(needed by x\).*no module 'gone'"):
        ModuleTree(modtree).resolve(("x",))


def test_modules_dep_is_used_when_present_and_cycles_are_errors(modtree):
    (modtree / "modules.dep").write_text(
        "kernel/drivers/nvme.ko: kernel/drivers/e1000.ko\nkernel/drivers/e1000.ko: kernel/drivers/nvme.ko\n"
    )
    with pytest.raises(BuildError, match="cycle nvme -> e1000 -> nvme"):
        ModuleTree(modtree).resolve(("nvme",))
    (modtree / "modules.dep").write_text("kernel/drivers/nvme.ko: kernel/drivers/e1000.ko\n")
    assert [m.name for m in ModuleTree(modtree).resolve(("nvme",))] == ["e1000", "nvme"]


def test_module_that_is_not_an_elf_is_a_build_error(modtree):
    bad = modtree / "kernel" / "bad.ko.xz"
    bad.write_bytes(lzma.compress(b"not an elf"))
    with pytest.raises(BuildError, match="not an ELF"):
        read_module(bad)
    bad.write_bytes(b"garbage")
    with pytest.raises(BuildError, match="cannot decompress"):
        read_module(bad)


def test_canonical_names():
    assert canonical("nvme-core") == canonical("nvme_core") == "nvme_core"


# --------------------------------------------------------------------------
# ELF library closure inside an unpacked tree


def _copy(src: str, root: Path, rel: str) -> None:
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(src).resolve(), dest)


@pytest.fixture
def libtree(tmp_path) -> Path:
    """A tree laid out as Debian 12's packages ship it (not usr-merged): /usr/bin/true,
    libc and the loader in /lib/x86_64-linux-gnu, /lib64's absolute symlink."""
    root = tmp_path / "root"
    _copy(shutil.which("true"), root, "usr/bin/true")
    _copy("/lib/x86_64-linux-gnu/libc.so.6", root, "lib/x86_64-linux-gnu/libc.so.6")
    _copy("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")  # fmt: skip
    (root / "lib64").mkdir()
    (root / "lib64" / "ld-linux-x86-64.so.2").symlink_to(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )
    return root


def test_needed_closure_finds_libc_and_the_loader(libtree):
    c = elfdeps.needed_closure(libtree, ["usr/bin/true"])
    assert c.files == {
        "lib64/ld-linux-x86-64.so.2": "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6": "lib/x86_64-linux-gnu/libc.so.6",
        # libc's own DT_NEEDED entry, found in the multiarch directory
        "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    }
    assert c.lib_dirs == ["lib/x86_64-linux-gnu"]


def test_needed_closure_names_a_missing_library(libtree):
    (libtree / "lib/x86_64-linux-gnu/libc.so.6").unlink()
    with pytest.raises(BuildError, match=r"/usr/bin/true needs libc.so.6, which none"):
        elfdeps.needed_closure(libtree, ["usr/bin/true"])


def test_symlinks_never_leave_the_tree(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "up").symlink_to("../../../../etc")
    (root / "a" / "abs").symlink_to("/etc/hostname")
    (root / "a" / "loop").symlink_to("loop")
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("inside")
    assert elfdeps.resolve_in(root, "a/abs") == "etc/hostname"
    assert elfdeps.resolve_in(root, "a/up/hostname") == "etc/hostname"
    assert elfdeps.resolve_in(root, "a/loop") is None
    assert elfdeps.resolve_in(root, "../../etc/passwd") is None


# --------------------------------------------------------------------------
# The init and its console lines


def test_init_loads_modules_in_order_and_quotes_them():
    text = initscript.render([("nvme_core", "lib/modules/v/a b.ko"), ("nvme", "lib/modules/v/n.ko")],
                             ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"], shell=False)  # fmt: skip
    assert text.startswith("#!/bin/busybox sh\n")
    assert text.index("load 'nvme_core' '/lib/modules/v/a b.ko'") < text.index("load 'nvme' ")
    assert "export LD_LIBRARY_PATH='/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu'" in text
    assert "mount -t devtmpfs devtmpfs /dev" in text and text.rstrip().endswith("poweroff -f")
    assert "@linux shell" not in text
    assert "setsid cttyhack sh" in initscript.render([], [], shell=True)


def test_init_script_is_valid_sh(tmp_path):
    f = tmp_path / "init"
    f.write_text(initscript.render([("it's", "x/y.ko")], ["lib"], shell=True))
    subprocess.run(["sh", "-n", str(f)], check=True)


@pytest.mark.parametrize(
    "stage,line",
    [("kernel", "[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)"),
     ("kernel", "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)"),
     ("initramfs", "[    2.540174] Run /init as init process"),
     ("init", "@linux init up=2.60"), ("modules", "@linux modules n=7 up=2.72"),
     ("run", "@linux run up=2.72"), ("done", "@linux done rc=0 up=2.74"),
     ("poweroff", "[    2.810480] reboot: Power down")],
)  # fmt: skip
def test_stage_patterns_match_real_lines(stage, line):
    assert initscript.stage_regex(stage).search(line)


def test_classify_names_the_stage_of_a_line():
    name, m = initscript.classify("[    0.000000] Linux version 6.1.0-57-amd64 (x)")
    assert name == "kernel" and m.group(1) == "6.1.0-57-amd64"
    assert initscript.classify("@linux done rc=3 up=9.5")[1].groups() == ("3", "9.5")
    assert initscript.classify("[    2.7] nvme nvme0: pci function 0000:00:03.0") is None


def test_stage_patterns_do_not_match_other_stages():
    assert not initscript.stage_regex("done").search("@linux run up=1.0")
    assert not initscript.stage_regex("kernel").search("foo Linux version 6")


def test_docs_console_table_is_current():
    text = (DOCS / "images.md").read_text()
    start = text.index("-->", text.index("<!-- linux-console")) + 3
    end = text.index("<!-- /linux-console -->")
    assert text[start:end].strip() == initscript.doc_table(), (
        "docs/images.md is stale: paste the output of python -c "
        "'from hil.images.initscript import doc_table; print(doc_table())'"
    )


# --------------------------------------------------------------------------
# The spec and the key


def test_linux_spec_from_mapping():
    spec = LinuxSpec.from_mapping({"kind": "linux", "packages": ["fio"], "modules": ["nvme"],
                                   "init": "fio --version\n", "append": "quiet"})  # fmt: skip
    assert spec == LinuxSpec(("fio",), ("nvme",), "fio --version\n", "quiet", False)


@pytest.mark.parametrize(
    "data,msg",
    [({"packges": []}, r"image.packges: unknown key for kind 'linux'"),
     ({"packages": "fio"}, r"image.packages: must be a list"),
     ({"packages": ["Fio!"]}, r"image.packages\[0\]: 'Fio!' is not a Debian package name"),
     ({"modules": ["nvme", "e1000/x"]}, r"image.modules\[1\]: 'e1000/x' is not a module name"),
     ({"init": ["ls"]}, r"image.init: must be a string"),
     ({"append": "a\nb"}, r"image.append: character '\\n' at position 1"),
     ({"shell": "yes"}, r"image.shell: must be true or false")],
)  # fmt: skip
def test_linux_spec_errors_name_the_key(data, msg):
    with pytest.raises(UserError, match=msg):
        LinuxSpec.from_mapping(data)


def test_key_depends_on_spec_and_versions():
    from hil.images.apt import Pkg

    res = Resolved(Pkg("linux-image-6.1.0-57-amd64", "6.1.192-3"), (Pkg("fio", "3.33-3"),))
    newer = Resolved(res.kernel, (Pkg("fio", "3.33-4"),))
    a = LinuxSpec(("fio",), ("nvme",), "fio\n")
    keys = {image_key(a, res), image_key(a, newer), image_key(LinuxSpec(("fio",), (), "fio\n"), res),
            image_key(LinuxSpec(("fio",), ("nvme",), "fio -v\n"), res)}  # fmt: skip
    assert len(keys) == 4
    assert image_key(a, res) == image_key(LinuxSpec(("fio",), ("nvme",), "fio\n"), res)
    assert re.fullmatch(r"[0-9a-f]{24}", image_key(a, res))
    assert Resolved.from_json(res.to_json()) == res


def test_download_errors_are_told_apart():
    from hil.images import apt

    net = apt._download_error(
        "Err:1 http://deb.debian.org/debian bookworm/main amd64 fio amd64 3.33-3\n"
        "  Temporary failure resolving 'deb.debian.org'\n"
        "E: Failed to fetch http://deb.debian.org/debian/pool/main/f/fio/fio_3.33-3_amd64.deb"
    )
    assert "no network reachable" in str(net) and "E: Failed to fetch" in str(net)
    gone = apt._download_error("E: Version '0.1' for 'fio' was not found\n")
    assert isinstance(gone, apt.VersionGone) and "'0.1' for 'fio'" in str(gone)
    other = apt._download_error("E: something else\n")
    assert type(other).__name__ == "InfraError" and "something else" in str(other)


def test_optional_files_with_missing_libraries_are_only_recorded(libtree):
    _copy(shutil.which("true"), libtree, "usr/lib/plugin.so")
    (libtree / "lib/x86_64-linux-gnu/libc.so.6").rename(libtree / "libc.so.6.away")
    c = elfdeps.needed_closure(libtree, [], ("usr/lib/plugin.so",))
    assert c.missing == [("usr/lib/plugin.so", "libc.so.6")]
    with pytest.raises(BuildError):
        elfdeps.needed_closure(libtree, ["usr/lib/plugin.so"])
