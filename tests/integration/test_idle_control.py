"""CPU idle's negative control: a guest that never halts must read near 0 % idle, beside
the normal kernel's >= 99 %, under TCG and under KVM -- so a metric that always said 100 %
could not pass."""

from __future__ import annotations

import json

import pytest

from hil import host

BODY = """\
steps:
  - expect: '@stage ready'
    timeout: 60
  - idle: 1.5
  - send: shutdown
  - exit: shutdown
"""


@pytest.mark.parametrize(
    "profile, method", [("q35-tcg-bios", "tcg-thread-time"), ("q35-kvm-pvh", "kvm-halt-wait")]
)
def test_a_spinning_guest_reads_busy_and_the_kernel_idle(hil, profile, method):
    if "kvm" in profile and not host.kvm().usable:
        pytest.skip(f"KVM unusable here: {host.kvm().reason}")
    normal = hil.scenario(f"profile: {profile}\n" + BODY)
    spin = hil.scenario(f"profile: {profile}\nimage: {{spin_idle: true}}\n" + BODY)
    r = hil("run", str(normal), str(spin))
    assert r.code == 0, r.out + r.err
    runs = {}
    for d in r.run_dirs:
        run = json.loads((d / "run.json").read_text())
        runs[run["scenario"]] = run
    idle = {name: run["metrics"]["cpu_idle"] for name, run in runs.items()}
    assert idle[normal.stem] >= 0.99, idle
    assert idle[spin.stem] < 0.2, idle
    assert runs[spin.stem]["image_defines"].get("PXOS_SPIN_IDLE") == "1"
    assert "PXOS_SPIN_IDLE" not in runs[normal.stem]["image_defines"]
    for run in runs.values():
        assert run["idle_windows"][0]["method"] == method
