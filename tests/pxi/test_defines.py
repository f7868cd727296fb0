"""Predefined constants (`defines`): scenario parameters handed to the assembler."""

from __future__ import annotations

import pytest

from hil.errors import UserError
from hil.vgpu.payload import load_program
from pxi.asm import assemble_text
from pxi.errors import AsmError

SRC = """
.default SEED 7
.threads 1
main:
    li32 r1, SEED
    li32 r2, LBAS * 2
    halt
"""


def ext(prog, pc):
    return int(prog.pixels[pc])


def test_defines_are_usable_like_consts_and_override_defaults():
    p = assemble_text(SRC, defines={"LBAS": 5})
    assert ext(p, 1) == 7 and ext(p, 3) == 10
    p = assemble_text(SRC, defines={"LBAS": 5, "SEED": 0xDEADBEEF})
    assert ext(p, 1) == 0xDEADBEEF


def test_missing_define_names_the_line():
    with pytest.raises(AsmError, match=r"<source>:6.*undefined name 'LBAS'"):
        assemble_text(SRC)


@pytest.mark.parametrize("src", ["LBAS = 3\n", ".const LBAS 3\n", "LBAS:\n halt\n"])
def test_source_redefining_a_define_is_an_error(src):
    with pytest.raises(AsmError, match=r"predefined by the caller.*\.default LBAS"):
        assemble_text(src, defines={"LBAS": 5})


@pytest.mark.parametrize(
    "defines, msg",
    [({"r3": 1}, "register name"), ({"a b": 1}, "not a name"), ({"X": "1"}, "not an integer")],
)
def test_bad_defines_are_refused(defines, msg):
    with pytest.raises(AsmError, match=msg):
        assemble_text("main:\n halt\n", defines=defines)


def test_load_program_passes_defines(tmp_path):
    src = tmp_path / "p.pxs"
    src.write_text(SRC)
    assert ext(load_program(src, {"LBAS": 21}), 3) == 42
    with pytest.raises(UserError, match=r"p.pxs.*LBAS"):
        load_program(src)


def test_an_including_file_may_set_a_default(tmp_path):
    (tmp_path / "lib.pxs").write_text(SRC)
    (tmp_path / "wrap.pxs").write_text('SEED = 99\nLBAS = 1\n.include "lib.pxs"\n')
    from pxi.asm import assemble_file

    p = assemble_file(tmp_path / "wrap.pxs")
    assert ext(p, 1) == 99 and ext(p, 3) == 2
