"""Device kinds' own judgement, on real files: QEMU's NVMe error trace in qemu.log."""

from __future__ import annotations

import textwrap

import pytest

from hil.devices import DEVICES, AfterContext
from hil.plan import make_plan
from hil.scenario import load_scenario

# Lines as QEMU 7.2's log trace backend writes them to the -D file.
LOG = """\
pci_nvme_ub_db_wr_invalid_sq submission queue doorbell write for nonexistent queue, sqid=5, ignoring
pci_nvme_err_invalid_lba_range Invalid LBA start=4096 len=8 limit=4096
"""


def plan_with(tmp_path, nvme: str):
    p = tmp_path / "s.yaml"
    p.write_text(
        textwrap.dedent(f"""\
        profile: q35-tcg-bios
        devices:
          - nvme: {nvme}
        steps:
          - expect: '@stage ready'
        """)
    )
    return make_plan(load_scenario(p))


def findings(tmp_path, nvme: str, outcome: str = "pass"):
    plan = plan_with(tmp_path, nvme)
    (tmp_path / "qemu.log").write_text(LOG)
    ctx = AfterContext(plan, tmp_path, [], outcome)
    (spec,) = plan.devices
    return DEVICES["nvme"].after(spec, ctx)


def test_nvme_error_trace_fails_a_passing_run_and_is_quoted(tmp_path):
    (f,) = findings(tmp_path, "{size: 1M}")
    assert f.outcome == "fail" and f.category == "device-error"
    assert "pci_nvme_ub_db_wr_invalid_sq submission queue doorbell" in f.reason
    assert "(and 1 more in qemu.log)" in f.reason and len(f.evidence) == 2


def test_allowed_trace_lines_do_not_fail(tmp_path):
    allowed = "{size: 1M, errors_allowed: [pci_nvme_err_invalid_lba_range, {regex: 'sqid=5'}]}"
    assert findings(tmp_path, allowed) == []


def test_after_a_failed_run_the_trace_is_a_note(tmp_path):
    (f,) = findings(tmp_path, "{size: 1M}", outcome="fail")
    assert f.outcome == "info"


def test_a_clean_log_finds_nothing(tmp_path):
    plan = plan_with(tmp_path, "{size: 1M}")
    (tmp_path / "qemu.log").write_text("pci_nvme_mmio_read addr 0x0 size 4\n")
    (spec,) = plan.devices
    assert DEVICES["nvme"].after(spec, AfterContext(plan, tmp_path, [], "pass")) == []


def _passthrough(tmp_path, host):
    from hil.cli import main

    p = tmp_path / "pt.yaml"
    p.write_text(
        "profile: q35-tcg-pvh\ndevices:\n"
        f"  - passthrough: {{host: '{host}', rom: false}}\n"
        "steps:\n  - expect: '@stage ready'\n"
    )
    return p, main(["validate", str(p)])


def test_passthrough_malformed_bdf_is_invalid_input(tmp_path, capsys):
    p, code = _passthrough(tmp_path, "01:00,0,bus=x")
    err = capsys.readouterr().err
    assert code == 2 and f"{p}:3: devices[0].passthrough.host" in err
    assert "is not a PCI address" in err and "Traceback" not in err


def test_passthrough_of_a_function_the_host_lacks_is_invalid_input(tmp_path, capsys):
    p, code = _passthrough(tmp_path, "0000:fe:1f.7")
    err = capsys.readouterr().err
    assert code == 2 and "this host has no PCI function 0000:fe:1f.7" in err


def test_passthrough_plan_reads_the_host_identity(tmp_path):
    """On this machine's real /sys (read only): the IDs the guest must see."""
    from pathlib import Path

    fns = sorted(Path("/sys/bus/pci/devices").glob("*"))
    if not fns:
        import pytest

        pytest.skip("no PCI functions in /sys")
    bdf = fns[0].name
    plan = make_plan(load_scenario(_passthrough(tmp_path, bdf)[0]))
    (spec,) = plan.devices
    vendor = int((fns[0] / "vendor").read_text(), 16)
    assert spec.ids[0].vendor == vendor and spec.host == bdf and spec.rom is False


def _image_scenario(tmp_path, image: str, extra: str = ""):
    from hil.cli import main

    p = tmp_path / "img.yaml"
    p.write_text(f"profile: q35-tcg-pvh\nimage: {image}\n{extra}steps:\n  - expect: 'x'\n")
    return p, main(["validate", str(p)])


def test_a_users_kernel_needs_a_ready_line(tmp_path, capsys):
    k = tmp_path / "bzImage"
    k.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 600)
    p, code = _image_scenario(tmp_path, f"{{kind: kernel, kernel: {k}}}")
    err = capsys.readouterr().err
    assert code == 2 and "prints no line hil knows as the end of boot" in err


def test_a_file_that_is_no_kernel_is_invalid_input(tmp_path, capsys):
    k = tmp_path / "notes.txt"
    k.write_text("hello\n" * 200)
    p, code = _image_scenario(tmp_path, f"{{kind: kernel, kernel: {k}}}", "ready: up\n")
    err = capsys.readouterr().err
    assert code == 2 and str(k) in err and "Traceback" not in err


def test_unknown_image_kind_and_key(tmp_path, capsys):
    p, code = _image_scenario(tmp_path, "{kind: windows}")
    assert code == 2 and "unknown image kind 'windows'" in capsys.readouterr().err
    p, code = _image_scenario(tmp_path, "{kind: linux, pakages: [fio]}")
    err = capsys.readouterr().err
    assert code == 2 and "pakages" in err and "did you mean 'packages'" in err


def test_the_vgpu_program_needs_the_pxos_image(tmp_path, capsys):
    from pathlib import Path

    prog = Path(__file__).resolve().parent.parent / "pxi" / "programs" / "hello.pxs"
    p = tmp_path / "g.yaml"
    p.write_text(
        f"profile: q35-tcg-vgpu\nimage: {{kind: linux}}\ngpu: {{program: {prog}}}\n"
        "steps:\n  - expect: x\n"
    )
    from hil.cli import main

    assert main(["validate", str(p)]) == 2
    assert "cannot carry the virtual GPU's program" in capsys.readouterr().err


@pytest.mark.parametrize(
    "nvme, key",
    [
        ("{size: 1M, namespaces: 9}", "must be 1 to 8"),
        ("{size: 1M, namespaces: 0}", "must be 1 to 8"),
        ("{size: 1M, namespaces: two}", "namespaces"),
        ("{file: disk.img, namespaces: 2}", "a fresh disk each"),
    ],
)
def test_nvme_namespaces_bad_input_names_the_key(tmp_path, capsys, nvme, key):
    from hil.cli import main

    (tmp_path / "disk.img").write_bytes(bytes(4096))
    p = tmp_path / "s.yaml"
    p.write_text(
        f"profile: q35-tcg-bios\ndevices:\n  - nvme: {nvme}\nsteps:\n  - expect: '@stage ready'\n"
    )
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "s.yaml:3" in err and "namespaces" in err and key in err, err
    assert "Traceback" not in err


def test_nvme_two_namespaces_attach_a_disk_each(tmp_path):
    from hil.devices.base import AttachContext
    from hil.devices.nvme import Nvme, NvmeKind

    spec = Nvme(size=1 << 20, fill="zero", serial="S", namespaces=2)
    ctx = AttachContext(tmp_path, name="nvme0")
    NvmeKind().attach(spec, ctx)
    args = " ".join(ctx.args)
    assert "-device nvme,id=nvme0,serial=S " in args
    assert "nvme-ns,drive=nvme0n1,nsid=1,bus=nvme0" in args
    assert "nvme-ns,drive=nvme0n2,nsid=2,bus=nvme0" in args
    assert set(ctx.files) == {"nvme0.disk", "nvme0n2.disk"}
    assert all(p.stat().st_size == 1 << 20 for p in ctx.files.values())


@pytest.mark.parametrize(
    "nvme, key",
    [
        ("{size: 1M, cmb_mb: 3000}", "power of two"),
        ("{size: 1M, cmb_mb: -4}", "power of two"),
        ("{size: 1M, cmb_mb: 131072}", "from 1 to 65536"),
        ("{size: 1M, cmb_mb: 4G}", "expected"),
        ("{size: 1M, cmb_mb: true}", "expected"),
    ],
)
def test_nvme_cmb_bad_input_names_the_key_and_the_fix(tmp_path, capsys, nvme, key):
    from hil.cli import main

    p = tmp_path / "s.yaml"
    p.write_text(
        f"profile: q35-tcg-bios\ndevices:\n  - nvme: {nvme}\nsteps:\n  - expect: '@stage ready'\n"
    )
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "s.yaml:3" in err and "cmb_mb" in err and key in err and "4096" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("namespaces", [1, 2])
def test_nvme_cmb_attaches_cmb_size_mb(tmp_path, namespaces):
    from hil.devices.base import AttachContext
    from hil.devices.nvme import Nvme, NvmeKind

    spec = Nvme(size=1 << 20, fill="zero", serial="S", namespaces=namespaces, cmb_mb=4096)
    ctx = AttachContext(tmp_path, name="nvme0")
    NvmeKind().attach(spec, ctx)
    (nvme,) = [a for a in ctx.args if a.startswith("nvme,")]
    assert nvme.endswith(",cmb_size_mb=4096"), nvme


def test_nvme_without_cmb_says_nothing_of_it(tmp_path):
    from hil.devices.base import AttachContext
    from hil.devices.nvme import Nvme, NvmeKind

    ctx = AttachContext(tmp_path, name="nvme0")
    NvmeKind().attach(Nvme(size=1 << 20, fill="zero", serial="S"), ctx)
    assert not any("cmb_size_mb" in a for a in ctx.args), ctx.args


def test_nvme_cmb_is_planned(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        "profile: q35-tcg-bios\ndevices:\n  - nvme: {size: 1M, cmb_mb: 4096}\n"
        "steps:\n  - expect: '@stage ready'\n"
    )
    (nvme,) = [d for d in make_plan(load_scenario(p)).devices if d.kind == "nvme"]
    assert nvme.cmb_mb == 4096
