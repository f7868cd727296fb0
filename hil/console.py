"""Console driver: pexpect on the machine's serial pty, one timestamped line at a time.

Scenario patterns match whole lines (docs/scenarios.md), so the driver hands out complete
lines, each stamped with the host time its newline arrived, and writes them to
``serial.log`` as they come (a crash loses nothing already printed).

Voluminous output (docs/console.md, "Floods"): the driver splits lines itself, in one
pass over what arrives -- pexpect's own search would copy its whole buffer at every read
while a line has no newline, and hold it all.  A line longer than ``MAX_LINE`` characters
is handed out in pieces of ``MAX_LINE`` (nothing is dropped; each piece is a line of its
own), so memory stays bounded by that and the kept lines.  ANSI escape sequences (colour,
cursor moves: CSI, OSC and two-character ESC sequences) and other control characters but
the tab are removed from a line's text, so patterns see what a person reads.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pexpect
from pexpect import fdpexpect


@dataclass(frozen=True)
class Line:
    t: float  # seconds since launch (host monotonic clock)
    text: str


class ConsoleClosed(Exception):
    """The other end hung up: QEMU exited."""


MAX_LINE = 1 << 20  # characters; a longer line comes out in pieces this long
READ_SIZE = 1 << 16  # bytes per read of the pty
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement, erase
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks
    r"|\x1b[ -/]*[0-~]"  # two-character sequences (charset selection, ...)
    r"|[\x00-\x08\x0b-\x1f\x7f]"  # other controls (a lone ESC too), but tab and newline
)


def clean(text: str) -> str:
    """A console line as patterns see it: no escape sequences or control characters."""
    return _ANSI.sub("", text) if ("\x1b" in text or not text.isprintable()) else text


class LineSplitter:
    """Text in, complete lines out, in one pass: pieces of a long line are kept in a list
    (joined once), and a line reaching ``max_line`` characters is cut there."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self.parts: list[str] = []
        self.size = 0

    def feed(self, text: str) -> list[str]:
        out = []
        while text:
            nl = text.find("\n")
            piece = text if nl < 0 else text[:nl]
            room = self.max_line - self.size
            if len(piece) >= room:  # the line is full: cut it here
                self.parts.append(piece[:room])
                out.append(self._take())
                text = text[room:]
                continue
            self.parts.append(piece)
            self.size += len(piece)
            if nl < 0:
                break
            out.append(self._take())
            text = text[nl + 1 :]
        return out

    def partial(self) -> str:
        """The line read so far (no newline yet)."""
        return "".join(self.parts)

    def rest(self) -> str:
        """What came after the last newline (at EOF: an unterminated last line)."""
        return self._take()

    def _take(self) -> str:
        line = "".join(self.parts)
        self.parts, self.size = [], 0
        return line


class Console:
    def __init__(
        self,
        fd: int,
        launched: float,
        log_path: Path,
        on_line: Callable[[Line], None] = lambda line: None,
    ):
        self.launched = launched
        self.on_line = on_line
        self.lines: list[Line] = []
        self.closed = False
        self._eof = False
        self._split = LineSplitter()
        self._ready: deque[tuple[float, str]] = deque()  # split, not handed out yet
        # wait_text's mark: text before it (line number counted over every line split so
        # far, and column) was consumed by a match and is not searched again
        self._handed = 0  # lines handed out of _ready
        self._mark = (0, 0)
        self._partial_t = 0.0  # when the partial line last grew
        self._log = log_path.open("w", encoding="utf-8")
        # The fd belongs to the machine (which closes it); we only read and write.
        self._child = fdpexpect.fdspawn(
            fd, timeout=None, maxread=4096, encoding="utf-8", codec_errors="replace", use_poll=True
        )

    def now(self) -> float:
        return time.monotonic() - self.launched

    def read_line(self, timeout: float) -> Line | None:
        """The next complete line, or None when ``timeout`` passes first.
        Raises ConsoleClosed once QEMU has gone and every line was handed out."""
        if self.closed:
            raise ConsoleClosed
        end = time.monotonic() + max(timeout, 0)
        while not self._ready:
            if self._eof:
                self.closed = True
                rest = self._split.rest()
                if rest.strip():
                    return self._add(rest, self.now())  # an unterminated last line counts
                raise ConsoleClosed
            try:
                data = self._child.read_nonblocking(READ_SIZE, max(end - time.monotonic(), 0))
            except pexpect.TIMEOUT:
                return None
            except pexpect.EOF:
                self._eof = True
                continue
            self._feed(data)
        t, text = self._ready.popleft()
        self._handed += 1
        return self._add(text, t)

    def _feed(self, data: str) -> None:
        t = self._partial_t = self.now()  # every line completed by this read arrived now
        self._ready.extend((t, text) for text in self._split.feed(data))

    def wait_text(self, text: str, timeout: float) -> float | None:
        """The time (seconds since launch) ``text`` arrived, within a line or not (an echo
        of typed keys has no newline yet); None when ``timeout`` passes first or QEMU
        has gone.  Lines are still handed out whole by read_line; what came up to and
        including ``text`` is not searched again by the next wait_text."""
        if self.closed or not text or "\n" in text:
            return None
        end = time.monotonic() + max(timeout, 0)
        while (hit := self._find(text)) is None:
            if self._eof or (left := end - time.monotonic()) <= 0:
                return None
            try:
                data = self._child.read_nonblocking(READ_SIZE, left)
            except pexpect.TIMEOUT:
                return None
            except pexpect.EOF:
                self._eof = True
                return None
            self._feed(data)
        return hit

    def _find(self, text: str) -> float | None:
        """Search what was read after the mark: the lines not handed out, then the partial
        line; move the mark past a match."""
        line, col = self._mark
        candidates = [(self._handed + i, t, s) for i, (t, s) in enumerate(self._ready)]
        candidates.append((self._handed + len(self._ready), self._partial_t, self._split.partial()))
        for n, t, s in candidates:
            if n < line:
                continue
            i = s.find(text, col if n == line else 0)
            if i >= 0:
                self._mark = (n, i + len(text))
                return t
        return None

    def _add(self, text: str, t: float) -> Line:
        line = Line(t, clean(text.rstrip("\r")))
        self.lines.append(line)
        self._log.write(f"{line.t * 1000:11.3f} {line.text}\n")
        self._log.flush()
        self.on_line(line)
        return line

    def send_line(self, text: str) -> None:
        self._log.write(f"{self.now() * 1000:11.3f} >>> {text}\n")
        self._log.flush()
        self._child.send(text + "\r")

    def drain(self, seconds: float) -> list[Line]:
        """Read whatever arrives within ``seconds`` (used after failures, for evidence)."""
        out, end = [], time.monotonic() + seconds
        try:
            while (left := end - time.monotonic()) > 0:
                line = self.read_line(left)
                if line is not None:
                    out.append(line)
        except ConsoleClosed:
            pass
        return out

    def tail(self, n: int = 20) -> list[Line]:
        return self.lines[-n:]

    def close(self) -> None:
        self._log.close()
