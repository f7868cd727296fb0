"""YAML loading that remembers where every value came from.

Users write scenarios and profiles by hand; when one is wrong the error must name the
file and the line.  PyYAML's SafeLoader already knows the marks, so we construct
mappings and sequences as thin dict/list subclasses that keep them.  Everything
downstream of the parsers (hil.scenario, hil.profile) works on plain dataclasses;
only the parsers see these types.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


class LDict(dict):
    """A mapping from YAML; ``line`` is where it starts, ``lines[key]`` where each key is."""

    line: int = 0
    lines: dict[Any, int]


class LList(list):
    """A sequence from YAML; ``lines[i]`` is the line of item i."""

    line: int = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LDict:
    out = LDict()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LList:
    out = LList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


class ValidationError(UserError):
    """One or more problems in a user's YAML file; ``problems`` are full paragraphs."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n\n".join(problems))


def load(path: Path, what: str) -> Any:
    """Parse ``path``; a missing file or bad YAML syntax is a ValidationError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError([f"{path}: no such {what} file. Check the path."]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValidationError([f"{path}: cannot read this {what} file ({e})."]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(x for x in (e.context, e.problem) if x)
        if "duplicate key" in problem:
            raise ValidationError(
                [f"{path}{line}: {problem}: a key may appear once per mapping. Keep one of them."]
            ) from None
        raise ValidationError(
            [
                f"{path}{line}: YAML syntax error: {problem}. Fix the YAML at that line "
                "(indentation, a missing ':' or an unquoted special character are the usual "
                "causes; quote strings that contain ': ' or start with '@', '!', '*' or '&')."
            ]
        ) from None
    except yaml.YAMLError as e:
        raise ValidationError([f"{path}: YAML error: {e}"]) from None


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when something close exists, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_MISSING = object()


@dataclass
class Problems:
    """Collects every problem of one file so the user sees them all at once."""

    path: Path
    items: list[str] = field(default_factory=list)

    def add(self, line: int | None, where: str, message: str) -> None:
        loc = f"{self.path}:{line}" if line else str(self.path)
        self.items.append(f"{loc}: {where}: {message}" if where else f"{loc}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationError(self.items)


class Fields:
    """Reads the keys of one YAML mapping, type-checking each and rejecting unknown ones.

    ``where`` is the dotted path shown to the user (``steps[2]``); ``allowed`` lists
    every key the mapping may hold, so a typo gets a "did you mean".
    """

    def __init__(
        self,
        problems: Problems,
        node: Any,
        where: str,
        allowed: Iterable[str],
        line: int | None = None,
    ):
        self.problems = problems
        self.where = where
        self.allowed = list(allowed)
        self.ok = isinstance(node, dict)
        self.node: dict = node if self.ok else {}
        self.line = getattr(node, "line", None) or line
        if not self.ok:
            problems.add(
                line, where, f"expected a mapping (key: value lines), got {_describe(node)}."
            )

    def line_of(self, key: str) -> int | None:
        lines = getattr(self.node, "lines", {})
        return lines.get(key, self.line)

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str | None, message: str) -> None:
        if key is None:
            self.problems.add(self.line, self.where, message)
        else:
            self.problems.add(self.line_of(key), self.path(key), message)

    def has(self, key: str) -> bool:
        return key in self.node

    def raw(self, key: str, default: Any = None) -> Any:
        return self.node.get(key, default)

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = _MISSING, example: str = ""
    ) -> Any:
        """The value of ``key`` checked against ``kind``; ``default`` when absent
        (no default means the key is required)."""
        if key not in self.node:
            if default is _MISSING:
                hint = f" Add e.g. '{example}'." if example else ""
                self.error(None, f"required key '{key}' is missing.{hint}")
                return None
            return default
        value = self.node[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python, but 'timeout: yes' is never meant as a number.
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int):
            ok = True
        else:
            ok = isinstance(value, kinds)
        if not ok:
            want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            hint = f" Write e.g. '{example}'." if example else ""
            self.error(key, f"expected {want}, got {_describe(value)}.{hint}")
            return None if default is _MISSING else default
        return float(value) if kinds == (float,) else value

    def choice(self, key: str, choices: Iterable[str], default: Any = _MISSING) -> Any:
        choices = list(choices)
        value = self.get(key, str, default, example=f"{key}: {choices[0]}")
        if key not in self.node or value is None:
            return value
        if value not in choices:
            self.error(
                key, f"{value!r} is not one of {', '.join(choices)}{suggest(value, choices)}."
            )
            return None if default is _MISSING else default
        return value

    def positive(self, key: str, default: Any = _MISSING, example: str = "") -> Any:
        value = self.get(key, float, default, example=example or f"{key}: 5")
        if key in self.node and value is not None and value <= 0:
            self.error(key, f"must be greater than 0, got {value}.")
            return None
        return value

    def done(self) -> None:
        """Report keys nobody asked for (typos, keys from another version)."""
        for key in self.node:
            if key not in self.allowed:
                self.error(
                    key,
                    f"unknown key '{key}'{suggest(key, self.allowed)}. "
                    f"Allowed here: {', '.join(self.allowed)}.",
                )


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    dict: "a mapping",
    list: "a list",
}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def parse_size(text: Any) -> int | None:
    """'64M', '1G', '512K', 4096 -> bytes; None when malformed."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text if text > 0 else None
    if not isinstance(text, str):
        return None
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    digits = s[:-1] if s[-1:] in "KMG" else s
    try:
        n = int(digits, 0)
    except ValueError:
        return None
    return n * mult if n > 0 else None
