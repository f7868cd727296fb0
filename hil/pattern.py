"""Console patterns: a literal substring, or a regular expression matched in linear time.

Scenario authors write ``expect``, ``lines``, ``ready`` and ``fail_on`` patterns, and every
console line is searched with every ``fail_on`` pattern.  Python's ``re`` backtracks: a
pattern such as ``(a+)+b`` against a line of 31 ``a`` takes minutes, ignores every step and
run timeout (the search never returns to check them) and starves the console reader.  RE2
(``google-re2``) guarantees time linear in the line's length whatever the pattern, and
bounds the memory a compiled pattern may use; the price is that backreferences and
lookaround, which need backtracking, are not supported (docs/scenarios.md, "Patterns").
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import re2

# The memory a compiled pattern may use (RE2's default is 8 MiB); a pattern needing more
# (e.g. 'a{1000}{1000}') is refused at validation instead of growing without bound.
MAX_PROGRAM_MEMORY = 8 << 20

# Constructs RE2 rejects, with what to write instead.  Checked in order, on the pattern
# text, only to explain RE2's own error message (RE2 decides what is valid).
_UNSUPPORTED = (
    (re.compile(r"\\[1-9]|\(\?P=\w+\)"), "a backreference", "match the text twice explicitly"),
    (
        re.compile(r"\(\?<?[=!]"),
        "a lookahead or lookbehind",
        "match the surrounding text instead (e.g. 'a(?=b)' -> 'ab')",
    ),
    (re.compile(r"\(\?>"), "an atomic group", "use a plain group '(...)'"),
    (re.compile(r"[*+?}][+]"), "a possessive quantifier", "drop the extra '+'"),
    (re.compile(r"\\Z"), r"'\Z'", r"write '\z' (end of text) or '$'"),
)


class PatternError(ValueError):
    """The regex does not compile under RE2; the message names the construct and the fix."""


def _options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print every rejected pattern to stderr
    opts.max_mem = MAX_PROGRAM_MEMORY
    return opts


@functools.lru_cache(maxsize=1024)
def compile_regex(text: str):
    """The RE2 program for ``text``; raises PatternError with an explanation."""
    try:
        return re2.compile(text, _options())
    except re2.error as e:
        raise PatternError(explain(text, e)) from None


def explain(text: str, error: Exception) -> str:
    """One sentence: what RE2 said, and which construct it is when we know it."""
    msg = error.args[0] if error.args else str(error)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    for construct, what, fix in _UNSUPPORTED:
        if construct.search(text):
            return (
                f"{msg}: {what} is not supported (patterns use RE2, which matches in "
                f"linear time and so cannot backtrack); {fix}"
            )
    if "too large" in msg or "memory" in msg:
        return f"{msg}: the pattern is too large to match in bounded memory; make it shorter"
    return msg


@dataclass(frozen=True)
class Pattern:
    """What a console line must contain: a literal substring, or a regex searched in it."""

    text: str
    regex: bool = False

    @property
    def compiled(self):
        """The RE2 program (a literal is escaped); ``search`` and ``groupindex`` as in re."""
        return compile_regex(self.text if self.regex else re2.escape(self.text))

    @property
    def groupindex(self) -> dict[str, int]:
        """Named groups -> their numbers (``record:`` stores these)."""
        return dict(self.compiled.groupindex) if self.regex else {}

    def search(self, line: str):
        """The first match in ``line`` (``group(name)`` as in re), or None."""
        return self.compiled.search(line)

    def __str__(self) -> str:
        return f"regex /{self.text}/" if self.regex else f"{self.text!r}"


def regex_problem(text: str) -> str | None:
    """Why ``text`` cannot be used as a pattern's regex (a sentence with the fix), or None."""
    try:
        compile_regex(text)
    except PatternError as e:
        from .yamlsrc import excerpt

        return (
            f"invalid regular expression {excerpt(text)}: {e}. Fix the regex (escape "
            "literal '.', '(', '[' and '+' with a backslash; the dialect is RE2, "
            "docs/scenarios.md)."
        )
    return None
