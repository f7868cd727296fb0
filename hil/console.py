"""Console driver: pexpect on the machine's serial pty, one timestamped line at a time.

Scenario patterns match whole lines (docs/scenarios.md), so the driver hands out complete
lines, each stamped with the host time its newline arrived, and writes them to
``serial.log`` as they come (a crash loses nothing already printed).
"""

from __future__ import annotations

import time
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
        self._log = log_path.open("w", encoding="utf-8")
        # The fd belongs to the machine (which closes it); we only read and write.
        self._pending = ""  # the start of a line whose characters wait_text consumed
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
        try:
            self._child.expect_exact("\n", timeout=max(timeout, 0))
        except pexpect.TIMEOUT:
            return None
        except pexpect.EOF:
            self.closed = True
            rest = self._pending + (self._child.before or "")
            self._pending = ""
            if rest.strip():
                return self._add(rest)  # an unterminated last line still counts
            raise ConsoleClosed from None
        return self._add(self._take(self._child.before))

    def _take(self, text: str) -> str:
        text, self._pending = self._pending + text, ""
        return text

    def wait_text(self, text: str, timeout: float) -> float | None:
        """The time (seconds since launch) ``text`` arrived, within a line or not (an echo
        of typed keys has no newline yet); None when ``timeout`` passes first or QEMU
        has gone.  Lines completed meanwhile are kept as lines; the part of the line
        read up to ``text`` stays the start of the next one."""
        if self.closed or "\n" in text:
            return None
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                i = self._child.expect_exact(["\n", text], timeout=left)
            except pexpect.TIMEOUT:
                return None
            except pexpect.EOF:
                self._pending += self._child.before or ""
                return None
            if i == 1:
                self._pending += self._child.before + text
                return self.now()
            self._add(self._take(self._child.before))
        return None

    def _add(self, text: str) -> Line:
        line = Line(self.now(), text.rstrip("\r"))
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
