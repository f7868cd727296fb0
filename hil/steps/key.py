"""key: press keys on the machine's keyboard through QMP (``input-send-event``).

    - key: 'Hello, World!'     # text, key by key (US layout; capitals and symbols with shift)
      hold: 0.03               # seconds each key is held down (default 0.03)
      gap: 0.05                # seconds between keys (default 0.05)
      echo: true               # wait for each character's echo on the console; the
                               # latency (QMP press sent -> echoed byte) is recorded
      record: key_echo         # metric names: key_echo.p50_ms, key_echo.p99_ms, key_echo.n
    - key: [shift+a+b, ret]    # or key names (QEMU qcodes); '+' holds keys together:
                               # pressed in order, released in reverse

Nothing is typed into the serial console: the keys go to the guest's keyboard device
(QEMU routes them to the most recently activated one, the USB keyboard when there is
one; ``device: usb0-kbd`` names it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..console import ConsoleClosed
from .base import STEPS, Step, StepKind

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "1234567890"
# US layout: character -> (qcode, shift)
_PLAIN = {
    " ": "spc",
    "-": "minus",
    "=": "equal",
    "[": "bracket_left",
    "]": "bracket_right",
    "\\": "backslash",
    ";": "semicolon",
    "'": "apostrophe",
    "`": "grave_accent",
    ",": "comma",
    ".": "dot",
    "/": "slash",
    "\t": "tab",
    "\n": "ret",
}
_SHIFTED = dict(zip("!@#$%^&*()", _DIGITS, strict=True)) | dict(
    zip(
        '_+{}|:"~<>?',
        [
            "minus",
            "equal",
            "bracket_left",
            "bracket_right",
            "backslash",
            "semicolon",
            "apostrophe",
            "grave_accent",
            "comma",
            "dot",
            "slash",
        ],
        strict=True,
    )
)
KEYMAP: dict[str, tuple[str, bool]] = (
    {c: (c, False) for c in _LETTERS + _DIGITS}
    | {c.upper(): (c, True) for c in _LETTERS}
    | {c: (q, False) for c, q in _PLAIN.items()}
    | {c: (q, True) for c, q in _SHIFTED.items()}
)
# QEMU's QKeyCode names a scenario may use (qapi/ui.json); the echo of the ones that
# type a character is that character
QCODES = frozenset(
    set(_LETTERS)
    | set(_DIGITS)
    | set(_PLAIN.values())
    | {
        "shift",
        "shift_r",
        "alt",
        "alt_r",
        "ctrl",
        "ctrl_r",
        "meta_l",
        "meta_r",
        "menu",
        "esc",
        "backspace",
        "caps_lock",
        "num_lock",
        "scroll_lock",
        "insert",
        "delete",
        "home",
        "end",
        "pgup",
        "pgdn",
        "left",
        "right",
        "up",
        "down",
        "print",
        "pause",
        "sysrq",
        "less",
        "asterisk",
        "kp_divide",
        "kp_multiply",
        "kp_subtract",
        "kp_add",
        "kp_enter",
        "kp_decimal",
        "kp_equals",
    }
    | {f"f{i}" for i in range(1, 13)}
    | {f"kp_{i}" for i in range(10)}
)
MAX_KEYS = 4096


def _pct(values: list[float], p: float) -> float:
    """The nearest-rank percentile (p99 of 50 samples is the largest)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


@dataclass(frozen=True)
class Key(Step):
    chords: tuple[tuple[str, ...], ...]  # each: qcodes held together
    echoes: tuple[str, ...]  # the character each chord should echo ('' for none)
    hold: float
    gap: float
    echo: bool
    record: str
    device: str
    kind = "key"


_TYPED = {v: c for c, v in KEYMAP.items() if c != "\n"}  # a newline ends a line: not waited for


def _echo_of(chord: tuple[str, ...]) -> str:
    """The character a chord types on a US keyboard ('' when none or several)."""
    shift = any(q in ("shift", "shift_r") for q in chord)
    typed = [q for q in chord if q not in ("shift", "shift_r")]
    return _TYPED.get((typed[0], shift), "") if len(typed) == 1 else ""


@STEPS.register
class KeyKind(StepKind):
    name = "key"
    keys = ("hold", "gap", "echo", "record", "device")

    def parse(self, f, common, ctx):
        raw = f.get("key", (str, list), example="key: 'hello'")
        hold = f.positive("hold", 0.03, example="hold: 0.03")
        gap = f.get("gap", float, 0.05, example="gap: 0.05")
        echo = f.get("echo", bool, False, example="echo: true")
        record = f.get("record", str, "", example="record: key_echo")
        device = f.get("device", str, "", example="device: usb0-kbd")
        if gap is not None and not 0 <= gap <= 60:
            f.error("gap", f"must be 0 to 60 seconds, got {gap}.")
            return None
        if hold is not None and hold > 60:
            f.error("hold", f"a key is held at most 60 seconds, got {hold}.")
            return None
        if record and not record.replace("_", "").replace(".", "").isalnum():
            f.error("record", "a metric name is letters, digits, '_' and '.'.")
            return None
        if record and not echo:
            f.error("record", "the latency is measured on the echo: add 'echo: true'.")
            return None
        chords = self._chords(f, raw) if raw is not None else None
        if chords is None or None in (hold, gap, echo, record, device):
            return None
        echoes = tuple(_echo_of(c) for c in chords)
        # a step's time must cover its keys; the echo waits come out of the same budget
        least = len(chords) * (hold + gap) + 5.0
        timeout = max(common["timeout"] or 0, least)
        return Key(
            **{**common, "timeout": timeout},
            chords=chords,
            echoes=echoes,
            hold=hold,
            gap=gap,
            echo=echo,
            record=record,
            device=device,
        )

    def _chords(self, f, raw) -> tuple | None:
        if isinstance(raw, str):
            if not raw:
                f.error("key", "nothing to type: give some text or a list of key names.")
                return None
            bad = sorted({c for c in raw if c not in KEYMAP})
            if bad:
                f.error(
                    "key",
                    f"cannot type {''.join(bad)[:20]!r} on a US keyboard; text holds letters, "
                    "digits, space, punctuation, tab and newline. For other keys give a list "
                    "of key names, e.g. 'key: [esc, f1]'.",
                )
                return None
            return tuple(
                (("shift", KEYMAP[c][0]) if KEYMAP[c][1] else (KEYMAP[c][0],)) for c in raw
            )
        chords = []
        for j, item in enumerate(raw):
            line = raw.lines[j] if hasattr(raw, "lines") else f.line_of("key")
            where = f"{f.path('key')}[{j}]"
            names = str(item).split("+") if isinstance(item, str | int) else [None]
            unknown = [n for n in names if n not in QCODES]
            if unknown:
                from ..yamlsrc import excerpt, suggest

                name = unknown[0]
                f.problems.add(
                    line,
                    where,
                    f"unknown key name {excerpt(name)}{suggest(str(name), QCODES)}: key names "
                    "are QEMU's qcodes (a, 1, ret, spc, shift, ctrl, esc, f1, ...; the list is "
                    "in docs/scenarios.md); hold keys together with '+', e.g. 'shift+a'.",
                )
                return None
            chords.append(tuple(names))
        if not chords or len(chords) > MAX_KEYS:
            f.error("key", f"give 1 to {MAX_KEYS} keys.")
            return None
        return tuple(chords)

    def recorded(self, step):
        if not step.record:
            return set()
        return {f"{step.record}.p50_ms", f"{step.record}.p99_ms", f"{step.record}.n"}

    def run(self, step, engine):
        if engine.monitor is None:
            engine.fail(step, "this machine has no QMP monitor to send keys", "key", "")
        latencies = []
        for chord, char in zip(step.chords, step.echoes, strict=True):
            if step.echo and char:
                self._settle(engine)
            sent = self._press(engine, step, chord, True)
            if step.echo and char:
                latencies.append(self._echo(engine, step, char, sent))
            time.sleep(step.hold)
            self._press(engine, step, tuple(reversed(chord)), False)
            time.sleep(step.gap)
        if step.record and latencies:
            out = engine.out.recorded
            out[f"{step.record}.p50_ms"] = round(_pct(latencies, 50) * 1000, 3)
            out[f"{step.record}.p99_ms"] = round(_pct(latencies, 99) * 1000, 3)
            out[f"{step.record}.n"] = len(latencies)
        detail = f"pressed {len(step.chords)} keys"
        if latencies:
            detail += (
                f", echo p50 {_pct(latencies, 50) * 1000:.1f} ms"
                f" p99 {_pct(latencies, 99) * 1000:.1f} ms over {len(latencies)}"
            )
        return detail

    @staticmethod
    def _settle(engine) -> None:
        """Read the complete lines already there, so that an echo is looked for only
        in what comes after the press (an earlier line may hold the same character)."""
        try:
            while engine.console.read_line(0) is not None:
                pass
        except ConsoleClosed:
            pass  # the echo wait says what happened

    def _press(self, engine, step, chord, down: bool) -> float:
        events = [
            {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": q}}}
            for q in chord
        ]
        args = {"events": events}
        if step.device:
            args["device"] = step.device
        sent = engine.console.now()
        try:
            engine.monitor.cmd("input-send-event", **args)
        except Exception as e:  # QMP's error: the device is not there, or not a keyboard
            engine.fail(step, f"QEMU refused the key press: {e}", "key", "+".join(chord))
        return sent

    def _echo(self, engine, step, char: str, sent: float) -> float:
        left = max(step.timeout - (engine.console.now() - sent), 0.1)
        got = engine.console.wait_text(char, min(left, 10.0))
        if got is None:
            engine.fail(
                step,
                f"the key {char!r} was not echoed on the console within {min(left, 10.0):.1f} s",
                "key",
                repr(char),
            )
        return got - sent
