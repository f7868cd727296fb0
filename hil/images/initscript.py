"""The /init of a `linux` image, and the console lines it and the kernel print.

/init is a busybox sh script (the kernel runs it as PID 1 from the initramfs). It mounts
proc, sysfs, devtmpfs and a tmpfs on /tmp, loads the image's kernel modules in
dependency order, runs the scenario's commands (`init:`, kept in /etc/hil/commands.sh),
optionally leaves a shell on the console, and powers the machine off with
`poweroff -f` (ACPI: QEMU exits with status 0).

STAGES and PANIC are the single source of the patterns a scenario can expect; the
table in docs/images.md is checked against them (tests/test_linux_image.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMMANDS_PATH = "etc/hil/commands.sh"


@dataclass(frozen=True)
class Stage:
    name: str
    pattern: str  # a regular expression matched against one console line
    source: str  # "kernel" or "init"
    meaning: str


# The kernel stamps its lines with seconds since boot (CONFIG_PRINTK_TIME, on in
# Debian's kernel); printk.time=0 would drop the stamp, so it is optional here.
TS = r"^(?:\[ *[0-9]+\.[0-9]+\] )?"

# In boot order. The kernel's lines are its own (Linux 6.1, printk with console=ttyS0);
# the init's lines all start with "@linux ", then the stage, then key=value fields.
STAGES: tuple[Stage, ...] = (
    Stage("kernel", TS + r"Linux version (\S+)", "kernel",
          "the kernel's banner, its first line on the serial console"),
    Stage("initramfs", TS + "Run /init as init process", "kernel",
          "the initramfs is unpacked and the kernel starts /init"),
    Stage("init", r"^@linux init up=([0-9.]+)$", "init",
          "/init runs; proc, sysfs, devtmpfs and /tmp are mounted; up= is /proc/uptime in seconds"),
    Stage("modules", r"^@linux modules n=(\d+) up=([0-9.]+)$", "init",
          "all of the image's modules are loaded (n of them), dependencies first"),
    Stage("run", r"^@linux run up=([0-9.]+)$", "init",
          "the scenario's commands (init:) start"),
    Stage("done", r"^@linux done rc=(\d+) up=([0-9.]+)$", "init",
          "the commands ended with exit status rc"),
    Stage("poweroff", TS + "reboot: Power down", "kernel",
          "the kernel powers the machine off (QEMU exits with status 0)"),
)  # fmt: skip

# Other lines the init prints.
LINES: tuple[tuple[str, str], ...] = (
    (r"^@linux module (\S+)$", "one module loaded (printed for each, in load order)"),
    (r"^@linux module-failed (\S+) rc=(\d+)$", "insmod of a module failed; the init goes on"),
    (r"^@linux shell$", "with shell: true, an interactive busybox sh now reads the console"),
)

# A kernel panic; with panic=-1 the kernel reboots at once, and -no-reboot makes QEMU
# exit. The line names the cause, e.g. "VFS: Unable to mount root fs" or
# "No working init found".
PANIC = r"Kernel panic - not syncing: (.*)"


def stage_regex(name: str) -> re.Pattern[str]:
    for s in STAGES:
        if s.name == name:
            return re.compile(s.pattern)
    raise KeyError(name)


_COMPILED = tuple((s.name, re.compile(s.pattern)) for s in STAGES)


def classify(line: str) -> tuple[str, re.Match[str]] | None:
    """The boot stage a console line marks, with its match (groups: see STAGES), or None."""
    for name, rx in _COMPILED:
        if m := rx.search(line):
            return name, m
    return None


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def render(modules: list[tuple[str, str]], lib_dirs: list[str], shell: bool) -> str:
    """The /init script. `modules`: (name, path in the image) in load order;
    `lib_dirs`: where the packages' shared libraries were put (LD_LIBRARY_PATH)."""
    ld_path = ":".join("/" + d for d in lib_dirs)
    insmods = "\n".join(f"load {_quote(name)} {_quote('/' + path)}" for name, path in modules)
    after = 'echo "@linux shell"\nsetsid cttyhack sh -l\n' if shell else ""
    return f"""#!/bin/busybox sh
# The init of a hil `linux` image (hil/images/initscript.py, docs/images.md).
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export LD_LIBRARY_PATH={_quote(ld_path)}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
up() {{ read -r u _ < /proc/uptime; echo "$u"; }}
echo "@linux init up=$(up)"
n=0
load() {{
    if insmod "$2"; then
        echo "@linux module $1"; n=$((n + 1))
    else
        echo "@linux module-failed $1 rc=$?"
    fi
}}
{insmods}
echo "@linux modules n=$n up=$(up)"
# From here on only kernel messages of level warning and worse reach the console, so
# that the commands' output (fio's JSON) is not cut by informational lines.
dmesg -n 5
echo "@linux run up=$(up)"
sh /{COMMANDS_PATH}
echo "@linux done rc=$? up=$(up)"
{after}sync
poweroff -f
"""


def doc_table() -> str:
    """The console-lines table of docs/images.md (tests/test_linux_image.py keeps it equal)."""
    rows = ["| stage | pattern (regular expression) | printed by | meaning |", "|---|---|---|---|"]
    for s in STAGES:
        rows.append(f"| `{s.name}` | `{s.pattern}` | {s.source} | {s.meaning} |")
    rows += ["", "| other line (init) | meaning |", "|---|---|"]
    rows += [f"| `{pat}` | {meaning} |" for pat, meaning in LINES]
    rows += ["", f"A kernel panic: `{PANIC}` (the group is the cause)."]
    return "\n".join(rows)
