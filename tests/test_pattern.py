"""Console patterns are matched in linear time (RE2), whatever the scenario author wrote."""

from __future__ import annotations

import time

import pytest

from hil.pattern import Pattern, PatternError, compile_regex
from hil.scenario import load_scenario


def test_catastrophic_backtracking_pattern_is_fast():
    # Python's re takes minutes on this (2^31 ways to split the a's); RE2 is linear.
    pat = Pattern("(a+)+b", regex=True)
    t0 = time.monotonic()
    assert pat.search("a" * 31) is None
    assert pat.search("a" * 100_000) is None
    assert pat.search("a" * 31 + "b") is not None
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("text", [r"(x+x+)+y", r"(.*a){20}", r"^(\w+\s?)*$"])
def test_other_classic_redos_patterns_are_fast(text):
    t0 = time.monotonic()
    Pattern(text, regex=True).search("x" * 5000 + "a" * 30 + "!")
    assert time.monotonic() - t0 < 1.0


def test_literal_patterns_match_substrings_with_regex_characters():
    p = Pattern("a.b(c")
    assert p.search("xx a.b(c yy") and not p.search("axb(c")
    assert str(p) == "'a.b(c'" and p.groupindex == {}


def test_named_groups_for_record():
    p = Pattern(r"^stats busy=(?P<busy>[0-9a-f]+) halt=(?P<halt>[0-9a-f]+)$", regex=True)
    assert set(p.groupindex) == {"busy", "halt"}
    assert set(p.compiled.groupindex) == {"busy", "halt"}
    m = p.search("stats busy=1f halt=2")
    assert m.group("busy") == "1f" and m.group("halt") == "2"
    assert str(p).startswith("regex /^stats")


def test_unicode_lines():
    m = Pattern(r"caf(?P<e>.)", regex=True).search("un café ☕")
    assert m.group("e") == "é"


@pytest.mark.parametrize(
    "text, construct",
    [
        (r"(a)\1", "a backreference"),
        (r"(?P<x>a)(?P=x)", "a backreference"),
        (r"a(?=b)", "a lookahead or lookbehind"),
        (r"a(?!b)", "a lookahead or lookbehind"),
        (r"(?<=a)b", "a lookahead or lookbehind"),
        (r"(?<!a)b", "a lookahead or lookbehind"),
        (r"(?>a)", "an atomic group"),
        (r"a++", "a possessive quantifier"),
        (r"a\Z", r"'\Z'"),
    ],
)
def test_unsupported_constructs_are_named_with_a_fix(text, construct):
    with pytest.raises(PatternError) as e:
        compile_regex(text)
    assert construct in str(e.value) and "RE2" in str(e.value)


def test_a_pattern_too_large_for_bounded_memory_is_refused():
    with pytest.raises(PatternError, match="too large to match in bounded memory"):
        compile_regex(r"\pL{1000}")
    with pytest.raises(PatternError, match="invalid repetition size"):
        compile_regex("((a{100}){100}){100}")


def test_validation_names_the_construct(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        "profile: q35-tcg-bios\nfail_on: [{regex: 'x(?=y)'}]\nsteps: [{expect: '@stage ready'}]\n"
    )
    with pytest.raises(Exception) as e:
        load_scenario(p)
    msg = str(e.value)
    assert f"{p}:2: fail_on[0].regex: invalid regular expression" in msg
    assert "lookahead or lookbehind is not supported" in msg and "'a(?=b)' -> 'ab'" in msg


def test_no_rejected_pattern_is_logged_to_stderr(capfd):
    with pytest.raises(PatternError):
        compile_regex("(unclosed")
    assert capfd.readouterr().err == ""
