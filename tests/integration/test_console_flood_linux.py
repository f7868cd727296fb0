"""The console on a real, voluminous guest (issue 13): Linux with initcall_debug (well
over a thousand kernel lines at boot), then 2000 numbered lines, colours, and a 64 KiB
line, printed by the init; every line is kept in order, the expects after the flood
match, a coloured line reads as its text.  tests/test_console_flood.py has the unit
tests of the line handling."""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.integration

SCENARIO = """\
profile: q35-tcg-bios
timeout: 180
image:
  kind: linux
  append: initcall_debug ignore_loglevel   # the initcall lines are KERN_DEBUG
  init: |
    # ignore_loglevel showed the initcalls; now quiet the kernel's console, or a late
    # asynchronous message (CI saw "tsc: Refined TSC clocksource calibration") is
    # written into the middle of a flood line by the guest itself
    echo N > /sys/module/printk/parameters/ignore_loglevel; echo 1 > /proc/sys/kernel/printk
    i=0; while [ $i -lt 2000 ]; do echo "flood $i of 2000"; i=$((i+1)); done
    printf '\\033[1;32mgreen ok\\033[0m \\033]0;a title\\007plain\\n'
    head -c 65536 /dev/zero | tr '\\000' y; echo
    echo "after the flood"
fail_on:
  - 'Kernel panic - not syncing'
steps:
  - expect: {regex: 'Linux version 6\\.\\d+\\.\\d+'}
    timeout: 120
  - name: initcall_debug floods the boot
    expect: {regex: '^\\[ *[0-9.]+\\] initcall .* returned 0 after '}
    timeout: 60
  - expect: 'flood 1999 of 2000'
    timeout: 60
  - expect: {regex: '^green ok plain$'}
  - expect: {regex: '^y+$'}             # (its length: checked below)
  - expect: 'after the flood'
  - expect: '@linux done rc=0'
    timeout: 30
  - expect: 'reboot: Power down'
    timeout: 30
  - exit: 0
"""


def test_linux_flood_keeps_every_line(hil):
    t0 = time.monotonic()
    r = hil("run", str(hil.scenario(SCENARIO)), timeout=400)
    elapsed = time.monotonic() - t0
    assert r.code == 0, r.out + r.err
    log = (r.run_dirs[0] / "serial.log").read_text().splitlines()
    text = [ln[12:] for ln in log]  # "   1234.567 " timestamps off
    initcalls = [t for t in text if re.search(r"\] initcall .* returned ", t)]
    assert len(initcalls) > 500, len(initcalls)  # initcall_debug really flooded
    flood = [t for t in text if t.startswith("flood ")]
    assert flood == [f"flood {i} of 2000" for i in range(2000)]
    assert "y" * 65536 in text and "green ok plain" in text
    assert not any("\x1b" in t for t in text)
    print(f"\n{len(text)} console lines, run took {elapsed:.1f} s")
