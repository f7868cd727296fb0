"""Nothing a user writes is injected into QEMU's command line (issue 9)."""

from __future__ import annotations

import textwrap

import pytest

from hil import qemuopt
from hil.cli import main


def test_commas_are_doubled_and_newlines_refused():
    assert qemuopt.value("a,b=c d") == "a,,b=c d"
    assert qemuopt.opts("nvme", serial="X,bus=nosuchbus", drive="d") == (
        "nvme,serial=X,,bus=nosuchbus,drive=d"
    )
    assert qemuopt.props(file="/r/x,y.img", id="n", skip=None) == "file=/r/x,,y.img,id=n"
    for bad in ("a\nb", "a\rb", "a\0b"):
        with pytest.raises(qemuopt.UnsafeValue):
            qemuopt.value(bad)


@pytest.mark.parametrize(
    "serial",
    ["X,bus=nosuchbus", "a=b", "two words and more than twenty", "new\\nline", "é"],
)
def test_nvme_serial_that_cannot_be_a_serial_is_invalid_input(tmp_path, capsys, serial):
    p = tmp_path / "s.yaml"
    p.write_text(
        textwrap.dedent(f"""\
        profile: q35-tcg-bios
        devices:
          - nvme: {{size: 1M, serial: "{serial}"}}
        steps:
          - expect: '@stage ready'
        """)
    )
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:3: devices[0].nvme.serial" in err and "Traceback" not in err


def test_results_that_is_a_file_is_invalid_input(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["run", "scenarios/boot.yaml", "--results", str(f)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_profile_memory_the_host_does_not_have_is_invalid_input(tmp_path, capsys):
    prof = tmp_path / "big.yaml"
    prof.write_text("machine: q35\nboot: pvh\nmemory: 512G\n")
    sc = tmp_path / "s.yaml"
    sc.write_text(f"profile: {prof}\nsteps:\n  - expect: '@stage ready'\n")
    assert main(["validate", str(sc)]) == 2
    err = capsys.readouterr().err
    assert f"{prof}: memory: 524288 MiB is more than this host has" in err


def test_qcow2_file_with_a_missing_backing_file_is_invalid_input(tmp_path, capsys):
    import subprocess

    base, top = tmp_path / "base.img", tmp_path / "top.qcow2"
    base.write_bytes(bytes(1 << 20))
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top)],
        check=True,
    )
    base.unlink()
    sc = tmp_path / "s.yaml"
    sc.write_text(
        "profile: q35-tcg-bios\ndevices:\n  - nvme: {file: top.qcow2}\n"
        "steps:\n  - expect: '@stage ready'\n"
    )
    assert main(["validate", str(sc)]) == 2
    err = capsys.readouterr().err
    assert f"{top}: qemu-img cannot use this disk file" in err and "Traceback" not in err


def test_repeat_beyond_reason_is_refused_at_once(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "scenarios/boot.yaml", "--repeat", "1000000000000"])
    assert e.value.code == 2
    assert "is not a whole number of at least 1 (and at most 10000)" in capsys.readouterr().err
