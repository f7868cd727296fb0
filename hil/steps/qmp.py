"""qmp: send one QMP command to QEMU (hot-unplug a device, ask for state).

    - qmp: device_del
      args: {id: usb0-stick}     # the command's arguments (default none)

The step fails with QEMU's own error when the command is refused.  The reply is shown
in the step's detail (cut to 200 characters).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .base import STEPS, Step, StepKind

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# commands that would end or wedge the run behind the judge's back: use the steps for them
_REFUSED = {"quit", "stop", "cont", "system_reset", "system_powerdown", "migrate"}


@dataclass(frozen=True)
class Qmp(Step):
    command: str
    args: str  # JSON of the arguments (a frozen dataclass holds no dict)
    kind = "qmp"


@STEPS.register
class QmpKind(StepKind):
    name = "qmp"
    keys = ("args",)

    def parse(self, f, common, ctx):
        command = f.get("qmp", str, example="qmp: device_del")
        args = f.get("args", dict, {}, example="args: {id: usb0-stick}")
        if command is None or args is None:
            return None
        if not _NAME.fullmatch(command):
            f.error("qmp", f"{command[:40]!r} is not a QMP command name (e.g. device_del).")
            return None
        if command in _REFUSED:
            f.error(
                "qmp",
                f"{command} would end or pause the machine behind the steps' back; use "
                "'send: shutdown' and an 'exit' step to end a run.",
            )
            return None
        return Qmp(**common, command=command, args=json.dumps(dict(args), sort_keys=True))

    def run(self, step, engine):
        if engine.monitor is None:
            engine.fail(step, "this machine has no QMP monitor", "qmp", step.command)
        try:
            reply = engine.monitor.cmd(step.command, **json.loads(step.args))
        except Exception as e:  # QMP's error reply, or a lost connection
            engine.fail(step, f"QEMU refused {step.command}: {e}", "qmp", step.command)
        return f"{step.command}: {json.dumps(reply)[:200]}"
