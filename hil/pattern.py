"""What a console line must contain: a literal substring, or a regex searched in it."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    text: str
    regex: bool = False

    @property
    def compiled(self) -> re.Pattern:
        return re.compile(self.text if self.regex else re.escape(self.text))

    def search(self, line: str) -> re.Match | None:
        return self.compiled.search(line)

    def __str__(self) -> str:
        return f"regex /{self.text}/" if self.regex else f"{self.text!r}"


def regex_problem(text: str) -> str | None:
    """Why ``text`` cannot be used as a pattern's regex, or None."""
    try:
        re.compile(text)
    except re.error as e:
        return (
            f"invalid regular expression {text!r}: {e}. Fix the regex (escape "
            "literal '.', '(', '[' and '+' with a backslash)."
        )
    return None
