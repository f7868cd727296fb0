"""The console on voluminous output (issue 13): thousands of lines, ANSI escape
sequences, very long lines without a newline -- every line kept, in order, expects still
matching after the flood, in bounded memory and time.  LineSplitter and clean() alone,
then the Console over a real pty with a writer thread, then the steps after a flood."""

from __future__ import annotations

import os
import threading
import time
import tracemalloc

import pytest

from hil import console as C
from hil.console import Console, ConsoleClosed, LineSplitter, clean

from .test_steps import PtyGuest, run


def test_splitter_keeps_every_line_across_arbitrary_chunks():
    text = "".join(f"line {i}\n" for i in range(500)) + "tail"
    for step in (1, 3, 7, 4096):
        s = LineSplitter()
        out = []
        for i in range(0, len(text), step):
            out += s.feed(text[i : i + step])
        assert out == [f"line {i}" for i in range(500)] and s.rest() == "tail"
        assert s.rest() == ""


def test_splitter_cuts_a_line_at_max_line_and_loses_nothing():
    s = LineSplitter(max_line=10)
    out = s.feed("a" * 25) + s.feed("b\nshort\n" + "c" * 10 + "\n")
    assert out == ["a" * 10, "a" * 10, "a" * 5 + "b", "short", "c" * 10, ""]
    assert "".join(out[:3]) == "a" * 25 + "b"


def test_clean_removes_escape_sequences_and_controls_but_keeps_text():
    assert clean("\x1b[0;32m  OK  \x1b[0m Started udev") == "  OK   Started udev"
    assert clean("\x1b]0;title\x07after \x1b]8;;http://x\x1b\\link") == "after link"
    assert clean("\x1b(Bplain\x1b[2K\x1b[1A") == "plain"
    assert clean("bell\x07 nul\x00 esc\x1b") == "bell nul esc"
    assert clean("tab\tkept, ümlaut kept") == "tab\tkept, ümlaut kept"
    assert clean("@gpu end state=3") == "@gpu end state=3"


class Writer:
    """Writes to the pty's slave from a thread (a pty buffers only a few KiB)."""

    def __init__(self, guest: PtyGuest, data: bytes, close: bool = True):
        self.guest, self.data, self.close = guest, data, close
        self.t = threading.Thread(target=self._write, daemon=True)
        self.t.start()

    def _write(self):
        view = memoryview(self.data)
        while view:
            n = os.write(self.guest.slave, view[:65536])
            view = view[n:]
        if self.close:
            time.sleep(0.2)  # let the reader drain before the hang-up
            self.guest.power_off(0)


def read_all(console: Console, timeout: float = 30.0) -> list[str]:
    out, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            line = console.read_line(end - time.monotonic())
        except ConsoleClosed:
            return out
        if line is not None:
            out.append(line.text)
    raise AssertionError(f"no hang-up within {timeout} s ({len(out)} lines)")


@pytest.fixture
def guest(tmp_path):
    g = PtyGuest(tmp_path)
    yield g
    if g.slave is not None:
        os.close(g.slave)
    os.close(g.console_fd)


def flood() -> tuple[bytes, list[str]]:
    """Linux-like boot output: initcall_debug lines, colours, a 64 KiB line, CRLF."""
    lines = [f"[    0.{i:06d}] calling  init_{i}+0x0/0x40 @ 1" for i in range(2000)]
    lines += ["\x1b[0;32m  OK  \x1b[0m Reached target Basic System.\r"]
    lines += ["x" * 65536, "after the long line"]
    want = [clean(ln.rstrip("\r")) for ln in lines]
    return ("\n".join(lines) + "\n").encode(), want


def test_console_keeps_every_line_of_a_flood_in_order(tmp_path, guest):
    data, want = flood()
    console = Console(guest.console_fd, guest.launched, tmp_path / "serial.log")
    Writer(guest, data)
    t0 = time.monotonic()
    got = read_all(console)
    elapsed = time.monotonic() - t0
    console.close()
    assert got == want
    assert got[2000] == "  OK   Reached target Basic System."
    assert elapsed < 10, f"{len(data)} bytes took {elapsed:.1f} s"
    log = (tmp_path / "serial.log").read_text().splitlines()
    assert len(log) == len(want) and log[-1].endswith(" after the long line")


def test_a_huge_line_without_newline_stays_bounded(tmp_path, guest):
    """24 MiB with no newline: handed out in MAX_LINE pieces as it arrives (nothing
    lost), the console never holding much more than one piece; linear time."""
    size = 24 << 20
    data = b"y" * size + b"\nend\n"  # (allocated before the count starts)
    console = Console(guest.console_fd, guest.launched, tmp_path / "serial.log")
    console.on_line = lambda line: console.lines.clear()  # keep memory to the driver's own
    tracemalloc.start()
    Writer(guest, data)
    t0 = time.monotonic()
    sizes, last = [], None
    try:
        while True:
            line = console.read_line(30)
            assert line is not None, "stalled"
            if line.text == "end":
                break
            sizes.append(len(line.text))
        last = read_all(console, 10)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        console.close()
    assert sum(sizes) == size and max(sizes) == C.MAX_LINE and last == []
    assert peak < 8 * C.MAX_LINE + (8 << 20), f"peak {peak / 2**20:.1f} MiB"
    assert time.monotonic() - t0 < 30


def test_steps_match_after_the_flood(tmp_path, guest):
    """An expect placed after 2000 lines, a long line and colours still finds its line,
    and a `lines` step sees a coloured line as the text a person reads."""
    data, _ = flood()
    Writer(guest, data + b"\x1b[1mready\x1b[0m\nbanner done\n", close=False)
    out, _console = run(
        tmp_path,
        guest,
        """\
        - expect: 'calling  init_1999+0x0/0x40 @ 1'
          timeout: 15
        - lines: ['  OK   Reached target Basic System.', 'after the long line']
          timeout: 15
        - expect: {regex: '^ready$'}
          timeout: 15
        - expect: 'banner done'
          timeout: 15
        """,
    )
    assert [r.status for r in out.results] == ["passed"] * 4, [r.detail for r in out.results]


def test_wait_text_finds_an_echo_without_newline_and_lines_stay_whole(tmp_path, guest):
    """wait_text (the key step's echoes) on the splitter: text in the partial line is
    found at once, not found twice, and the line still comes out whole afterwards."""
    console = Console(guest.console_fd, guest.launched, tmp_path / "serial.log")
    os.write(guest.slave, b"before\n$ a")
    assert console.wait_text("a", 5) is not None
    assert console.wait_text("a", 0.2) is None  # that 'a' was consumed
    os.write(guest.slave, b"b\n")
    assert console.wait_text("b", 5) is not None
    assert [console.read_line(5).text for _ in range(2)] == ["before", "$ ab"]
    assert console.wait_text("x\n", 1) is None  # never across lines
    console.close()
