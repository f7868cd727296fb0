"""YAML loading that remembers where every value came from.

Users write scenarios and profiles by hand; when one is wrong the error must name the
file and the line.  PyYAML's SafeLoader already knows the marks, so we construct
mappings and sequences as thin dict/list subclasses that keep them.  Everything
downstream of the parsers (hil.scenario, hil.profile) works on plain dataclasses;
only the parsers see these types.
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import stat
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


# Bounds on what a scenario or profile file may make us do.  Real files are a few KB, a
# few levels deep and hold a few hundred values; each bound is far above that and far
# below what would cost noticeable time or memory.
MAX_FILE_BYTES = 1 << 20  # scenario and profile files
MAX_DEPTH = 64  # nested mappings/sequences (PyYAML's composer recurses per level)
MAX_NODES = 100_000  # values in the document once aliases are expanded
MAX_INT_CHARS = 40  # an integer's text (int() of long text is quadratic)
MAX_INT = (1 << 64) - 1  # nothing hil reads is larger than a 64-bit size
EXCERPT_CHARS = 60  # how much of a user's value an error message quotes


def _limit(message: str, mark) -> yaml.MarkedYAMLError:
    return yaml.constructor.ConstructorError(None, None, message, mark)


class _Loader(yaml.SafeLoader):
    """SafeLoader with bounded depth, size after alias expansion, and integers."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        # An alias returns an already composed node: only new nodes count and nest.
        if self.check_event(yaml.events.AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        self._nodes += 1
        if self._depth > MAX_DEPTH:
            raise _limit(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
        if self._nodes > MAX_NODES:
            raise _limit(f"more than {MAX_NODES} values", self.peek_event().start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        if len(text) > MAX_INT_CHARS:
            raise _limit(f"an integer of {len(text)} characters is too large", node.start_mark)
        value = super().construct_yaml_int(node)
        if abs(value) > MAX_INT:
            raise _limit(f"the integer {value} is too large (at most 2^64-1)", node.start_mark)
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _check_expansion(root: yaml.Node) -> None:
    """Aliases share nodes, so a small file can stand for a huge (or infinite) document
    (an "alias bomb"); everything downstream walks the expanded document.  Count it,
    each node once (memoised), and refuse a cycle or more than MAX_NODES values."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            if size[key] > MAX_NODES:
                raise _limit(
                    f"through aliases ('*name') this expands to more than {MAX_NODES} values",
                    node.start_mark,
                )
            continue
        if key in size:
            continue
        if key in active:
            raise _limit("an alias refers to a value that contains it (a cycle)", node.start_mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LDict:
    out = LDict()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a key must be a plain value (a word or a number), not a list or a mapping",
                key_node.start_mark,
            )
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _limit("this key cannot be used as a key", key_node.start_mark) from None
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {excerpt(key, 40)}", key_node.start_mark
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


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _open_problem(path: Path, what: str, e: OSError) -> str:
    if e.errno == errno.ENOENT:
        if os.path.islink(path):
            return f"{path}: this {what} path is a symbolic link to a missing file. Fix the link."
        return f"{path}: no such {what} file. Check the path."
    if e.errno == errno.ELOOP:
        return f"{path}: this {what} path is a loop of symbolic links. Point it at a regular file."
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied; hil cannot read this {what} file."
    if e.errno == errno.ENOTDIR:
        return f"{path}: a part of this {what} path is not a directory. Check the path."
    return f"{path}: cannot read this {what} file ({e.strerror or e})."


def _open_input(path: Path, what: str, max_bytes: int) -> tuple[int | None, str | None]:
    """(fd, None) for a regular file of at most max_bytes, else (None, problem)."""
    try:
        st = os.stat(path)  # no open yet: opening a FIFO blocks, a device may act on it
    except OSError as e:
        return None, _open_problem(path, what, e)
    if not stat.S_ISREG(st.st_mode):
        return None, (
            f"{path}: this {what} path is {_file_kind(st.st_mode)}, not a regular file. "
            f"Give the path of a {what} file."
        )
    try:
        # O_NONBLOCK: should the path have been swapped for a FIFO since the stat, the
        # open returns at once and the fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        return None, _open_problem(path, what, e)
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"{path}: this {what} path is {_file_kind(st.st_mode)}, not a regular file."
    elif st.st_size > max_bytes:
        problem = (
            f"{path}: this {what} file is {st.st_size} bytes; it may be at most {max_bytes} "
            f"bytes. Is it the right file?"
        )
    if problem:
        os.close(fd)
        return None, problem
    return fd, None


def check_input_file(path: Path, what: str, max_bytes: int) -> str | None:
    """None when ``path`` is a regular, readable file of at most ``max_bytes``; else the
    problem, one sentence starting with the path.  Never blocks: a FIFO, a device, a
    directory or a symlink loop is refused from its stat, before any open.  ``what``
    names the file for the user ("scenario", "NVMe backing", "GPU program")."""
    fd, problem = _open_input(Path(path), what, max_bytes)
    if fd is not None:
        os.close(fd)
    return problem


def read_input_file(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of a file that passes check_input_file; else a ValidationError."""
    fd, problem = _open_input(Path(path), what, max_bytes)
    if fd is None:
        raise ValidationError([problem])
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise ValidationError([_open_problem(Path(path), what, e)]) from None
    if len(data) > max_bytes:  # it grew since the fstat
        raise ValidationError([f"{path}: this {what} file is over {max_bytes} bytes."])
    return data


def load(path: Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Parse ``path``; an unreadable file or bad YAML is a ValidationError."""
    data = read_input_file(path, what, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValidationError(
            [f"{path}: this {what} file is not UTF-8 text (byte {e.start}); is it the right file?"]
        ) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = excerpt_text(" ".join(x for x in (e.context, e.problem) if x), 200)
        if "duplicate key" in problem:
            raise ValidationError(
                [f"{path}{line}: {problem}: a key may appear once per mapping. Keep one of them."]
            ) from None
        if isinstance(e, yaml.constructor.ConstructorError) and e.context is None:
            # Our own limits (and PyYAML's tag errors): the message says what is wrong.
            raise ValidationError(
                [f"{path}{line}: {problem}. A {what} file does not need that; simplify it."]
            ) from None
        raise ValidationError(
            [
                f"{path}{line}: YAML syntax error: {problem}. Fix the YAML at that line "
                "(indentation, a missing ':' or an unquoted special character are the usual "
                "causes; quote strings that contain ': ' or start with '@', '!', '*' or '&')."
            ]
        ) from None
    except yaml.YAMLError as e:
        # ReaderError (a control character) and the like: no mark, a short message.
        raise ValidationError([f"{path}: YAML error: {excerpt_text(str(e), 300)}"]) from None


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short, escaped quotation of a user's value for an error message: repr() (so
    newlines and control characters show as escapes), cut to about ``limit``
    characters with the full length said."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return excerpt_text(text, limit)


def excerpt_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when something close exists, else ''."""
    word = str(word)
    if len(word) > 100:  # nothing that long is a typo of a key, and difflib is quadratic
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_MISSING = object()


@dataclass
class Problems:
    """Collects every problem of one file so the user sees them all at once."""

    path: Path
    items: list[str] = field(default_factory=list)

    def add(self, line: int | None, where: str, message: str) -> None:
        # A safety net: a message quoting a user's value must stay a paragraph even where
        # the quote was not cut with excerpt().
        where, message = excerpt_text(where, 200), _cut(message, MAX_MESSAGE)
        loc = f"{self.path}:{line}" if line else str(self.path)
        self.items.append(f"{loc}: {where}: {message}" if where else f"{loc}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationError(self.items)


MAX_MESSAGE = 1500


def _cut(message: str, limit: int) -> str:
    if len(message) <= limit:
        return message
    tail = limit // 3
    return f"{message[: limit - tail]} [... {len(message) - limit} characters] {message[-tail:]}"


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
            # The whole file (where == "") is never quoted: it may be any file (/etc/shadow).
            got = _describe(node, quote=bool(where))
            problems.add(line, where, f"expected a mapping (key: value lines), got {got}.")

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
        elif isinstance(value, float) and not math.isfinite(value):
            hint = f" Write e.g. '{example}'." if example else ""
            shown = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[str(value)]
            self.error(key, f"expected a finite number, got {shown}.{hint}")
            return None if default is _MISSING else default
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
                key,
                f"{excerpt(value)} is not one of {', '.join(choices)}{suggest(value, choices)}.",
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
        if not self.where and self.node and not any(k in self.allowed for k in self.node):
            # Not a file of this kind at all (/etc/shadow): its keys are its content, and
            # an error message must not print that.
            self.error(
                None,
                f"none of the {len(self.node)} keys of this file is one it may have "
                f"({', '.join(self.allowed)}): is it the right file?",
            )
            return
        for key in self.node:
            if key not in self.allowed:
                self.error(
                    key,
                    f"unknown key {excerpt(key)}{suggest(key, self.allowed)}. "
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


def _describe(value: Any, quote: bool = True) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {excerpt(value)}" if quote else f"a string of {len(value)} characters"
    return f"{type(value).__name__} {excerpt(value)}" if quote else type(value).__name__


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
