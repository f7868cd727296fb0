"""Patterns that make a backtracking regex engine run for minutes cost nothing (RE2): the
guest's echo of 31 'a' against `(a+)+b` stalled the console reader past every timeout."""

from __future__ import annotations

import time


def test_a_catastrophic_fail_on_pattern_does_not_stall_the_run(hil):
    # Anchored at the echo ('? aaa...'): unanchored, `(a+)+b` matched "ab" in a TSC's hex
    # ('@stage pci tsc=bfab7a6', a fresh-clone CI run) -- still catastrophic for a
    # backtracking engine on the echo line, harmless on every other line.
    a31 = "a" * 31
    sc = hil.scenario(f"""\
profile: q35-tcg-bios
timeout: 60
fail_on: [{{regex: '^\\? (a+)+b'}}, {{regex: '(\\w+\\s?)*!'}}]
steps:
  - expect: '@stage ready'
    timeout: 30
  - send: {a31}
  - send: stats
  - expect: {{regex: '^stats busy='}}
    timeout: 10
  - send: shutdown
  - exit: shutdown
""")
    t0 = time.monotonic()
    r = hil("run", str(sc))
    assert r.code == 0, r.out + r.err
    assert time.monotonic() - t0 < 60
    # The echo went through every fail_on pattern on its way to the stats line.
    serial = (r.run_dirs[0] / "serial.log").read_text()
    assert f"? {a31}" in serial.split("stats busy=")[0]
