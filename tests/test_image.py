"""hil/image.py with the real toolchain (nasm, gcc, binutils): layout, cache, budget, errors.

A couple of boot smoke tests (marked `integration`) start the image in QEMU/TCG
when qemu-system-x86_64 is installed; the full console checks live with the
scenario tests.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from hil import image
from hil.errors import BuildError, InfraError, UserError
from hil.image import ImageRecipe

REPO = Path(__file__).resolve().parent.parent
QEMU = shutil.which("qemu-system-x86_64")
QBOOT = Path("/usr/share/qemu/qboot.rom")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def img(cache) -> image.Image:
    return image.build(ImageRecipe(), cache_root=cache)


@pytest.fixture
def src_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of boot/ and microkernel/ that the builder reads instead."""
    for sub in ("boot", "microkernel"):
        shutil.copytree(REPO / sub, tmp_path / sub)
    monkeypatch.setattr(image, "SOURCE_ROOT", tmp_path)
    return tmp_path


def _handoff(disk: bytes) -> tuple[int, tuple[int, int, int, int]]:
    off = disk[:512].find(image.HANDOFF_MAGIC)
    return off, struct.unpack_from("<HHII", disk, off + 4)


def test_boot_sector_is_512_bytes_with_signature(img):
    boot = (img.dir / "boot.bin").read_bytes()
    assert len(boot) == 512
    assert boot[510:] == b"\x55\xaa"
    assert img.disk.read_bytes()[:512] == boot


def test_handoff_block_matches_the_kernel_header(img):
    # The kernel reads the block at a fixed address (microkernel/boot.h); the
    # boot sector puts it where the builder finds the magic.  They must agree.
    hdr = (REPO / "microkernel" / "boot.h").read_text()
    addr = int(re.search(r"#define HANDOFF \(\(volatile struct handoff \*\)(0x[0-9A-Fa-f]+)\)",
                         hdr).group(1), 16)  # fmt: skip
    off, (sectors, version, paddr, psize) = _handoff(img.disk.read_bytes())
    assert 0x7C00 + off == addr
    assert version == 1 and paddr == 0 and psize == 0
    assert sectors * 512 >= len(img.flat.read_bytes())


def test_disk_layout(img):
    disk = img.disk.read_bytes()
    flat = img.flat.read_bytes()
    assert len(disk) % (1 << 20) == 0
    assert disk[512 : 512 + len(flat)] == flat
    _, (sectors, *_rest) = _handoff(disk)
    assert not any(disk[512 + len(flat) : 512 + sectors * 512])  # .bss arrives as zeros


def test_flat_binary_is_the_elfs_loadable_bytes(img):
    with open(img.elf, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_entry"] == image.LOAD_ADDR
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_filesz"]]
        end = max(s["p_paddr"] + s["p_filesz"] for s in loads)
        want = bytearray(end - image.LOAD_ADDR)
        for s in loads:
            at = s["p_paddr"] - image.LOAD_ADDR
            want[at : at + s["p_filesz"]] = s.data()
    assert img.flat.read_bytes() == bytes(want)


def test_pvh_note_points_at_the_32bit_entry(img):
    entry = image.pvh_entry(img.elf)
    assert entry is not None
    with open(img.elf, "rb") as f:
        elf = ELFFile(f)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name("pvh_entry")[0]
        text = elf.get_section_by_name(".text")
        assert entry == sym["st_value"]
        assert text["sh_addr"] <= entry < text["sh_addr"] + text["sh_size"]


def test_size_report_and_metadata(img):
    s = img.size
    # What is held to the budget is what is loaded: kernel.bin, the PT_LOAD file size.
    assert s.counted == len(img.flat.read_bytes())
    assert s.counted == s.text + s.rodata + s.data + s.padding and 0 <= s.padding < 64
    assert 0 < s.counted <= s.budget == image.read_budget()
    with open(img.elf, "rb") as f:
        loads = [g for g in ELFFile(f).iter_segments() if g["p_type"] == "PT_LOAD"]
        assert s.counted == sum(g["p_filesz"] for g in loads)
    assert s.note == 24  # the PVH note: counted apart, it is in no loaded segment
    report = s.format()
    assert f"loaded   {s.counted:6d}" in report and f"padding  {s.padding:6d}" in report
    assert "PVH note" not in report.split("rodata")[1].split("\n")[0]
    assert s.bss > 6 * 4096  # stack, IDT and the PVH page tables are not counted
    assert img.version == image.read_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", img.version)
    meta = (img.dir / "image.json").read_text()
    assert img.key in meta and '"tools"' in meta
    assert img.build_log.exists() and "gcc" in img.build_log.read_text()


def test_second_build_is_cached_and_runs_no_tool(img, cache, monkeypatch):
    def no_tools(*a, **k):
        raise AssertionError(f"a tool was run: {a}")

    monkeypatch.setattr(subprocess, "run", no_tools)
    monkeypatch.setattr(subprocess, "Popen", no_tools)
    again = image.build(ImageRecipe(), cache_root=cache)
    assert again.cached and not img.cached
    assert again.key == img.key and again.disk == img.disk


def test_defines_change_the_key_and_the_kernel(img, cache):
    fault = image.build(ImageRecipe(defines=(("PXOS_BOOT_FAULT", "1"),)), cache_root=cache)
    assert fault.key != img.key
    assert b"\x0f\x0b" in fault.flat.read_bytes()  # ud2 made it into the image
    assert fault.flat.read_bytes() != img.flat.read_bytes()


def test_a_source_byte_changes_the_key(src_copy, cache):
    key = image.image_key(ImageRecipe(), cache_root=cache)
    main = src_copy / "microkernel" / "main.c"
    main.write_bytes(main.read_bytes() + b"\n")
    assert image.image_key(ImageRecipe(), cache_root=cache) != key


def test_payload_is_placed_after_the_kernel(tmp_path, cache):
    data = os.urandom(5000)
    (tmp_path / "p.bin").write_bytes(data)
    im = image.build(ImageRecipe(payload=tmp_path / "p.bin"), cache_root=cache)
    disk = im.disk.read_bytes()
    _, (sectors, _, paddr, psize) = _handoff(disk)
    assert psize == len(data) and paddr % 4096 == 0 and paddr > image.LOAD_ADDR
    at = 512 + paddr - image.LOAD_ADDR
    assert disk[at : at + len(data)] == data
    assert sectors == -(-(paddr - image.LOAD_ADDR + len(data)) // 512)
    assert im.payload is not None and im.payload.read_bytes() == data
    # the payload's bytes are part of the key
    (tmp_path / "p.bin").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert image.image_key(ImageRecipe(payload=tmp_path / "p.bin"), cache_root=cache) != im.key


def test_missing_payload_is_a_user_error(tmp_path, cache):
    with pytest.raises(UserError, match="nope.bin"):
        image.build(ImageRecipe(payload=tmp_path / "nope.bin"), cache_root=cache)


def test_tiny_budget_fails_with_the_numbers(img, cache):
    with pytest.raises(BuildError) as e:
        image.build(ImageRecipe(), cache_root=cache, budget=100)
    msg = str(e.value)
    assert str(img.size.counted) in msg and "100" in msg and "budget.yaml" in msg


def test_missing_nasm_names_the_package(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("gcc", "ld", "objcopy"):
        os.symlink(shutil.which(tool), bindir / tool)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(InfraError) as e:
        image.build(ImageRecipe(), cache_root=tmp_path / "c")
    assert "nasm" in str(e.value) and "apt-get install nasm" in str(e.value)
    assert not isinstance(e.value, BuildError)


def test_compile_error_shows_the_compiler_output(src_copy, tmp_path):
    pci = src_copy / "microkernel" / "pci.c"
    pci.write_text(pci.read_text() + "\nthis is not C;\n")
    with pytest.raises(BuildError, match=r"pci\.c.*error"):
        image.build(ImageRecipe(), cache_root=tmp_path / "c")
    assert not list((tmp_path / "c").glob(".tmp-*"))  # the temp dir is gone


def test_parallel_builds_of_one_key_agree(tmp_path):
    results, errors = [], []

    def one():
        try:
            results.append(image.build(ImageRecipe(), cache_root=tmp_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.key for r in results}) == 1
    assert all(r.disk.exists() for r in results)
    assert not list(tmp_path.glob(".tmp-*"))


# --- boot smoke tests (QEMU, TCG) ------------------------------------------


def _boot(args: list[str]) -> tuple[int, str]:
    cmd = [QEMU, "-M", "q35", "-accel", "tcg", "-m", "128", "-nodefaults", "-no-user-config",
           "-display", "none", "-serial", "stdio", "-no-reboot",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=4", *args]  # fmt: skip
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out = ""
    try:
        while "@tsc khz=" not in out:
            line = p.stdout.readline()
            if not line:
                break
            out += line
        p.stdin.write("stats\nshutdown\n")
        p.stdin.flush()
        rest, _ = p.communicate(timeout=20)
        return p.returncode, out + rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.integration
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize("path", ["bios", "pvh"])
def test_image_boots(img, path):
    if path == "bios":
        args = ["-drive", f"file={img.disk},format=raw,if=ide,snapshot=on"]
    else:
        if not QBOOT.exists():
            pytest.skip("qboot.rom not installed")
        args = ["-bios", str(QBOOT), "-kernel", str(img.elf)]
    rc, out = _boot(args)
    assert out.startswith(f"pxOS microkernel {img.version} {path}\n"), out
    stages = re.findall(r"^@stage (\w+) tsc=[0-9a-f]+$", out, re.M)
    want = ["boot", "lmode", "kernel", "pci", "ready"] if path == "bios" else \
        ["lmode", "kernel", "pci", "ready"]  # fmt: skip
    assert stages == want, out
    assert re.search(r"^pci 00:00\.0 8086:29c0 060000$", out, re.M), out
    # ` sum=` (since issue 15): the kernel's own checksum of its image and page tables
    stats = r"^stats busy=[0-9a-f]+ halt=[0-9a-f]+ wakes=[0-9a-f]+ reqs=0 sum=[0-9a-f]{16}$"
    assert re.search(stats, out, re.M), out
    assert out.rstrip().endswith("bye") and rc == 1, (rc, out)


def test_gdt_reloaded_after_every_bios_call(img):
    """Regression: SeaBIOS can return from int 13h with its own GDT loaded; the boot
    sector then far-jumped to selector 8 of the wrong table (#GP, triple fault, about
    1 boot in 40 on `pc` with USB storage under load).  Every switch to protected mode
    must come after an lgdt that itself comes after the last BIOS call."""
    import subprocess

    asm = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-mi8086", str(img.dir / "boot.bin")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ops = [ln.split("\t")[-1].strip() for ln in asm.splitlines() if "\t" in ln]
    gdt_fresh, switches = False, 0
    for op in ops[: next(i for i, o in enumerate(ops) if o.startswith("lods"))]:  # code only
        if op.startswith("int "):
            gdt_fresh = False
        elif op.startswith("lgdtw") or op.startswith("lgdt"):
            gdt_fresh = True
        elif op.startswith("mov") and op.endswith(",%cr0") and "%eax" in op:
            switches += 1
            assert gdt_fresh, f"CR0 written without a fresh lgdt since the last BIOS call: {ops}"
    assert switches >= 2


# --- prebuilt images (a GPU host without compilers: tools/gpu-bundle) -------------------


def _no_tools(monkeypatch):
    def missing():
        raise InfraError("`nasm` not found on PATH: building the pxOS image needs it.")

    monkeypatch.setattr(image, "_find_tools", missing)


def test_prebuilt_image_stands_in_where_the_tools_are_missing(tmp_path, cache, monkeypatch):
    pre = tmp_path / "prebuilt"
    pre.mkdir()
    recipe = ImageRecipe(defines=(("PXOS_BOOT_FAULT", "1"),))
    out = image.export_prebuilt(recipe, pre, cache_root=cache)
    assert out.name == image.source_key(recipe)
    built = image.build(recipe, cache_root=cache)
    _no_tools(monkeypatch)
    monkeypatch.setenv(image.PREBUILT_ENV, str(pre))
    got = image.build(recipe, cache_root=tmp_path / "empty-cache")
    assert got.dir == out and got.cached
    assert got.flat.read_bytes() == built.flat.read_bytes()
    assert got.size.counted == built.size.counted


def test_no_prebuilt_for_this_recipe_names_the_key_and_the_fix(tmp_path, cache, monkeypatch):
    pre = tmp_path / "prebuilt"
    pre.mkdir()
    image.export_prebuilt(ImageRecipe(), pre, cache_root=cache)
    _no_tools(monkeypatch)
    other = ImageRecipe(defines=(("PXOS_SPIN_IDLE", "1"),))
    with pytest.raises(InfraError) as e:
        image.build(other, cache_root=tmp_path / "c")
    assert "not found on PATH" in str(e.value)  # without the variable: the plain error
    monkeypatch.setenv(image.PREBUILT_ENV, str(pre))
    with pytest.raises(InfraError) as e:
        image.build(other, cache_root=tmp_path / "c")
    msg = str(e.value)
    assert image.source_key(other) in msg and "tools/gpu-bundle" in msg


def test_source_key_ignores_the_tools_but_not_the_sources(src_copy, cache):
    k = image.source_key(ImageRecipe())
    main = src_copy / "microkernel" / "main.c"
    main.write_bytes(main.read_bytes() + b"\n")
    assert image.source_key(ImageRecipe()) != k
