"""Hostile and malformed scenario/profile files: a clear exit 2, never a traceback or a hang
(issue 9).  Each case is a regression test for one reported input."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hil import yamlsrc
from hil.cli import main
from hil.yamlsrc import MAX_FILE_BYTES, ValidationError, check_input_file, excerpt, load

REPO = Path(__file__).resolve().parent.parent
HEAD = "profile: q35-tcg-bios\nsteps: [{expect: '@stage ready'}]\n"


def validate(capsys, path) -> tuple[int, str]:
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out + out.err


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "body, needle, line",
    [
        ("timeout: " + "9" * 401 + "\n", "an integer of 401 characters is too large", 3),
        ("timeout: " + "1" * 30 + "\n", "is too large (at most 2^64-1)", 3),
        ("? [a, b]\n: 1\n", "a key must be a plain value", 3),
        ("? {a: 1}\n: 1\n", "a key must be a plain value", 3),
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nested more than 64 levels deep", 3),
        ("x: " + "{a: " * 100_000 + "}" * 100_000 + "\n", "nested more than 64 levels", 3),
        ("a: &a [*a]\n", "(a cycle)", 3),
        ("timeout: .nan\n", "timeout: expected a finite number, got .nan", 3),
        ("timeout: .inf\n", "timeout: expected a finite number, got .inf", 3),
        ("timeout: -.inf\n", "timeout: expected a finite number, got -.inf", 3),
        ("timeout: 1.0e+999\n", "expected a finite number, got .inf", 3),
        ("metrics: {boot_ms: {max: .nan}}\n", "metrics.boot_ms.max: expected a finite number", 3),
        ("steps2: 1:2:3:4:5:6:7:8:9:1:2:3:4:5:6:7:8:9:1:2:3:4\n", "integer of", 3),
    ],
)
def test_hostile_values_are_a_clean_validation_error(tmp_path, capsys, body, needle, line):
    path = write(tmp_path, HEAD + body)
    code, out = validate(capsys, path)
    assert code == 2, out
    assert f"{path}:{line}: " in out and needle in out, out


def test_an_alias_bomb_is_refused_quickly(tmp_path, capsys):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    path = write(tmp_path, HEAD + "\n".join(lines) + "\n")
    t0 = time.monotonic()
    code, out = validate(capsys, path)
    assert code == 2 and "expands to more than 100000 values" in out, out
    assert time.monotonic() - t0 < 5


def test_aliases_that_stay_small_are_fine(tmp_path, capsys):
    path = write(tmp_path, "profile: q35-tcg-bios\nsteps: &s [{expect: '@stage ready'}]\n")
    assert validate(capsys, path)[0] == 0


def test_a_huge_string_gives_a_short_message(tmp_path, capsys):
    # Under the file size limit, far over what any message may quote.
    for key in ("name", "timeout", "profile", "ready"):
        path = write(tmp_path, HEAD.replace("profile", "x") + f"{key}: " + "x" * 900_000 + "\n")
        code, out = validate(capsys, path)
        assert code == 2 and len(out) < 4000, out[:5000]
    path = write(tmp_path, HEAD + "? '" + "x" * 900_000 + "'\n: 1\n")
    code, out = validate(capsys, path)
    assert code == 2 and len(out) < 2000 and "900000 characters" in out, out[:3000]


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    code, out = validate(capsys, path)
    assert code == 2 and f"is {MAX_FILE_BYTES + 1} bytes; it may be at most" in out, out


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_a_device_is_not_a_scenario(capsys, path):
    code, out = validate(capsys, path)
    assert code == 2 and f"{path}: this scenario path is a character device" in out, out


def test_a_symlink_loop_is_named(tmp_path, capsys):
    (tmp_path / "a.yaml").symlink_to("b.yaml")
    (tmp_path / "b.yaml").symlink_to("a.yaml")
    code, out = validate(capsys, tmp_path / "a.yaml")
    assert code == 2 and "is a loop of symbolic links" in out, out


def test_a_dangling_symlink_is_named(tmp_path, capsys):
    (tmp_path / "a.yaml").symlink_to("gone.yaml")
    code, out = validate(capsys, tmp_path / "a.yaml")
    assert code == 2 and "gone.yaml: no such scenario file" in out, out


def _never_blocks(fn):
    """Run fn in a thread; fail (rather than hang the suite) if it does not return."""
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "blocked on a FIFO"
    return result["v"]


def _validate_subprocess(*args) -> tuple[int, str]:
    p = subprocess.run(
        [sys.executable, "-m", "hil.cli", "validate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,  # a FIFO opened for reading would block forever
        cwd=REPO,
    )
    assert "Traceback" not in p.stderr
    return p.returncode, p.stdout + p.stderr


def test_fifos_never_block(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    code, out = _validate_subprocess(fifo)
    assert code == 2 and "is a named pipe (FIFO)" in out, out
    # ... in a scenario directory (every *.yaml is loaded) and as the profile
    write(tmp_path, "profile: ./pipe.yaml\nsteps: [{expect: x}]\n", "p.yaml")
    code, out = _validate_subprocess(tmp_path)
    assert code == 2 and out.count("is a named pipe (FIFO)") == 2, out


def test_a_directory_is_not_reported_as_missing(tmp_path, capsys):
    (tmp_path / "d.yaml").mkdir()
    write(tmp_path, "profile: ./d.yaml\nsteps: [{expect: x}]\n", "s.yaml")
    code, out = validate(capsys, tmp_path / "s.yaml")
    assert code == 2 and "this profile path is a directory" in out, out
    assert "does not exist" not in out and "no such" not in out


def test_other_files_are_never_printed(tmp_path, capsys):
    secret = "user{}:$y$j9T$S3CRETHASHthatmustnotbeprinted:20228:0:99999:7:::"
    other = write(tmp_path, "\n".join(secret.format(i) for i in range(30)) + "\n", "shadow")
    code, out = validate(capsys, other)
    assert code == 2 and "none of the 30 keys of this file" in out, out
    assert "S3CRET" not in out
    plain = write(tmp_path, "\n".join(["user:x:0:0:S3CRET:/root:/bin/sh"] * 30), "passwd")
    write(tmp_path, f"profile: {plain}\nsteps: [{{expect: x}}]\n")
    code, out = validate(capsys, tmp_path / "s.yaml")
    assert code == 2 and "got a string of" in out and "S3CRET" not in out, out


def test_binary_garbage_is_a_clean_error(tmp_path, capsys):
    p = tmp_path / "g.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    code, out = validate(capsys, p)
    assert code == 2 and "not UTF-8 text" in out, out
    p.write_bytes(b"a: \x00\x01\n")
    code, out = validate(capsys, p)
    assert code == 2 and str(p) in out, out


class TestCheckInputFile:
    def test_a_regular_file_passes(self, tmp_path):
        p = write(tmp_path, "x", "f.img")
        assert check_input_file(p, "NVMe backing", 10) is None

    def test_each_refusal_names_path_and_kind(self, tmp_path):
        os.mkfifo(tmp_path / "fifo")
        (tmp_path / "loop").symlink_to("loop")
        big = write(tmp_path, "x" * 11, "big")
        cases = {
            tmp_path / "fifo": "named pipe (FIFO)",
            tmp_path / "loop": "loop of symbolic links",
            tmp_path: "a directory",
            Path("/dev/null"): "a character device",
            tmp_path / "nope": "no such GPU program file",
            big: "is 11 bytes; it may be at most 10 bytes",
            tmp_path / "big" / "x": "is not a directory",
        }
        for path, needle in cases.items():
            problem = _never_blocks(lambda p=path: check_input_file(p, "GPU program", 10))
            assert problem and problem.startswith(f"{path}: ") and needle in problem, problem

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
    def test_unreadable(self, tmp_path):
        p = write(tmp_path, "x", "f")
        p.chmod(0)
        assert "permission denied" in check_input_file(p, "scenario", 10)


def test_load_raises_validation_errors_only(tmp_path):
    with pytest.raises(ValidationError):
        load(tmp_path / "missing.yaml", "scenario")
    with pytest.raises(ValidationError):
        load(write(tmp_path, "a: 1\n", "x.yaml"), "scenario", max_bytes=2)


def test_excerpt_is_short_and_escaped():
    assert excerpt("a\nb") == "'a\\nb'"
    long = excerpt("x" * 10_000)
    assert len(long) < 100 and "10000 characters" in long
    assert len(excerpt(list(range(10_000)))) < 100
    assert yamlsrc.suggest("y" * 10_000, ["name"]) == ""
