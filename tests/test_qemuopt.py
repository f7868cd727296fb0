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
