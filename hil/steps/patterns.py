"""The YAML form of a console pattern, shared by every step kind and by ``fail_on``."""

from __future__ import annotations

from ..pattern import Pattern, regex_problem
from ..yamlsrc import Fields, Problems


def parse_pattern(problems: Problems, node, where: str, line) -> Pattern | None:
    """'text' -> substring; {regex: '...'} -> regex (checked now, so errors show here)."""
    if isinstance(node, str):
        if not node:
            problems.add(
                line, where, "an empty pattern matches every line; write the text to look for."
            )
            return None
        return Pattern(node)
    if isinstance(node, dict):
        f = Fields(problems, node, where, ["regex"], line)
        text = f.get("regex", str, example=r"regex: 'pci 00:0\d\.0'")
        f.done()
        if text is None:
            return None
        if (why := regex_problem(text)) is not None:
            problems.add(f.line_of("regex"), f"{where}.regex", why)
            return None
        return Pattern(text, regex=True)
    problems.add(
        line,
        where,
        "a pattern is a string (a literal substring of a console "
        "line) or {regex: '...'} (an RE2 regular expression searched in a line).",
    )
    return None
