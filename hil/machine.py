"""Power driver: one QEMU process, its serial pty and its QMP socket, and their lifetime.

``QemuMachine`` is a context manager: whatever happens inside the ``with`` (pass, fail,
timeout, Ctrl-C, an exception in hil) the process group is stopped, the pty closed and the
socket directory removed.  QEMU runs

* without a shell, in its own session/process group (a Ctrl-C at the terminal reaches
  hil, which then stops QEMU in order), and with a parent-death signal (via util-linux
  ``setpriv --pdeathsig``) so that even a SIGKILLed hil leaves no QEMU behind;
* with its COM1 on a pty we opened *before* launch, so no byte is ever lost and no
  ``-S``/``cont`` dance is needed (docs/results.md: "launch" is the fork of QEMU);
* with QMP connecting back to a socket we already listen on (hil.qmp).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tty
from dataclasses import dataclass
from pathlib import Path

from . import host, janitor, qemuopt
from .errors import InfraError
from .process import Lifetime, launcher, stop_group
from .qmp import QmpDriver

# Under KVM the guest gets the host's CPU model, minus IA32_ARCH_CAPABILITIES: nested KVM
# hosts (ours among them) refuse that MSR and QEMU 7.2 then aborts at start-up.
KVM_DEFAULT_CPU = "host,-arch-capabilities"


@dataclass(frozen=True)
class MachineConfig:
    """Everything needed to start QEMU, already resolved (no YAML, no choices left)."""

    name: str
    machine: str  # q35 | pc
    accel: str  # kvm | tcg
    cpu: str | None
    memory_mib: int
    cpus: int
    acpi: bool
    boot: str  # bios | pvh
    disk: Path | None  # boot disk (bios); None: boot ``kernel`` through the firmware
    kernel: Path | None  # PVH ELF (pvh), or a kernel of another image kind
    initrd: Path | None  # payload on the PVH path, or an initramfs
    append: str | None = None  # a kernel command line (-append), for kernels that take one
    device_args: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    iommu: bool = False  # attach QEMU's intel-iommu (DMA remapping only)
    iommu_intremap: bool = False  # ... with interrupt remapping (Linux's vfio wants it)


def qemu_argv(cfg: MachineConfig, serial_path: str, qmp_path: str, log_path: Path) -> list[str]:
    exe = host.which(host.QEMU)
    if exe is None:
        raise InfraError(
            f"{host.QEMU} is not installed, so nothing can boot. Install the "
            "Debian package qemu-system-x86 (bin/hil does this when run as root)."
        )
    cpu = cfg.cpu or (KVM_DEFAULT_CPU if cfg.accel == "kvm" else None)
    datadir = ["-L", str(host.QEMU_DATADIR)] if os.environ.get(host.DATADIR_ENV) else []
    argv = [
        exe,
        *datadir,
        "-name",
        f"pxos-{cfg.name},debug-threads=on",
        "-machine",
        f"{cfg.machine},accel={cfg.accel}" + ("" if cfg.acpi else ",acpi=off"),
        "-m",
        str(cfg.memory_mib),
        "-smp",
        str(cfg.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-chardev",
        qemuopt.opts("serial", id="com1", path=serial_path),
        "-serial",
        "chardev:com1",
        "-chardev",
        qemuopt.opts("socket", id="qmp", path=qmp_path),
        "-mon",
        "chardev=qmp,mode=control",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-D",
        str(log_path),
        "-d",
        "guest_errors,cpu_reset",
    ]
    if cpu:
        argv += ["-cpu", cpu]
    if cfg.iommu:
        # Before every PCI device: QEMU 7.2 accepts it later too, but devices created
        # before it keep untranslated DMA, silently.  Interrupt remapping off: the kernel
        # does not use it, MSI-X then passes untranslated, and KVM would need
        # kernel-irqchip=split for it (docs/profiles.md).
        # An L1 Linux that runs vfio needs remapping on: vfio_iommu_type1 refuses a
        # container without it (allow_unsafe_interrupts); under TCG no irqchip is split.
        remap = "on" if cfg.iommu_intremap else "off"
        argv += ["-device", f"intel-iommu,intremap={remap}"]
    if cfg.boot == "bios" and cfg.disk is not None:
        # snapshot=on: the guest's writes go to a throw-away overlay; the cached image
        # is never modified (AHCI/IDE refuse read-only drives).
        drive = qemuopt.props(file=cfg.disk, format="raw", index=0, media="disk", snapshot="on")
        argv += ["-drive", drive + ",if=ide"]
    elif cfg.boot == "bios":  # SeaBIOS boots the kernel (QEMU's linuxboot option ROM)
        argv += ["-kernel", str(cfg.kernel)]
        if cfg.initrd:
            argv += ["-initrd", str(cfg.initrd)]
    else:
        if not host.QBOOT.exists():
            raise InfraError(
                f"{host.QBOOT} is missing; the PVH boot path uses qboot as its "
                "firmware. Install the Debian package qemu-system-data."
            )
        argv += ["-bios", str(host.QBOOT), "-kernel", str(cfg.kernel)]
        if cfg.initrd:
            argv += ["-initrd", str(cfg.initrd)]
    if cfg.append:
        argv += ["-append", cfg.append]  # one argv element: no option parsing applies
    return argv + list(cfg.device_args) + list(cfg.extra_args)


class QemuMachine(Lifetime):
    """Start/stop one QEMU.  Attributes once started: ``pid``, ``launched`` (monotonic),
    ``console_fd`` (pty master), ``qmp`` (QmpDriver), ``argv``."""

    def __init__(self, cfg: MachineConfig, workdir: Path):
        self.cfg = cfg
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.qmp: QmpDriver | None = None
        self.console_fd: int | None = None
        self._slave_fd: int | None = None
        self._sockdir: str | None = None
        self.launched = 0.0
        self.argv: list[str] = []
        self.stderr_path = workdir / "qemu.stderr"
        self.log_path = workdir / "qemu.log"

    # -- lifetime -------------------------------------------------------------
    def start(self) -> None:
        # short path: sun_path is 108 bytes; owned, so a SIGKILLed hil's is cleaned up
        self._sockdir = janitor.owned_tempdir("hil-")
        qmp_path = os.path.join(self._sockdir, "qmp.sock")
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: bytes as the guest sent them
        os.set_blocking(master, False)
        self.console_fd, self._slave_fd = master, slave
        self.argv = qemu_argv(self.cfg, os.ttyname(slave), qmp_path, self.log_path)

        self.qmp = QmpDriver(self.cfg.name)
        self.qmp.listen(qmp_path)
        # QEMU's own temporary files (the snapshot=on overlay of the boot disk) go to
        # the private directory too: per run, and removed with it even when QEMU is
        # killed before it could delete them (a stop during its start-up).
        env = {**os.environ, "TMPDIR": self._sockdir}
        with self.stderr_path.open("wb") as err:
            self.launched = time.monotonic()
            try:
                self.proc = subprocess.Popen(
                    launcher() + self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                    env=env,
                )
            except OSError as e:
                raise InfraError(f"cannot start QEMU ({self.argv[0]}): {e}") from None
        self.qmp.accept_async()

    def wait_started(self, timeout: float = 30.0) -> None:
        """Block until QEMU has connected to QMP; a QEMU that dies first is an InfraError
        carrying its own error message (bad option, KVM unusable, missing file...)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None and not self.qmp.connected:
                raise InfraError(
                    f"QEMU exited during start-up (status {self.proc.returncode}):"
                    f" {self.stderr_tail() or 'no message'}"
                )
            try:
                self.qmp.wait_connected(0.05)
                break
            except InfraError:
                if time.monotonic() > deadline:
                    raise InfraError(
                        f"QEMU did not start within {timeout:.0f} s: "
                        f"{self.stderr_tail() or 'no message'}"
                    ) from None
        self.release_console()

    def release_console(self) -> None:
        """Drop our copy of the pty slave once QEMU holds its own -- it has connected to
        QMP, which it does after creating its chardevs -- or has exited.  From then on
        QEMU's exit shows on the console as EOF (EIO) at once."""
        if self._slave_fd is not None and (self.qmp.connected or self.proc.poll() is not None):
            os.close(self._slave_fd)
            self._slave_fd = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr_tail(self, n: int = 5) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        # Our own -cpu/host feature warnings are noise in an error message.
        lines = [ln for ln in lines if "host doesn't support requested feature" not in ln]
        return " | ".join(lines[-n:])

    def stop(self) -> int | None:
        """Stop QEMU (QMP quit, then SIGTERM, then SIGKILL to its process group) and
        release every resource.  Returns QEMU's exit status.  Idempotent."""
        status = None
        if self.proc is not None:
            if self.proc.poll() is None and self.qmp is not None and self.qmp.connected:
                try:
                    self.qmp.cmd("quit", timeout=2)
                except InfraError:
                    pass
                self.wait_exit(3)
            status = stop_group(self.proc)
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        for fd in (self.console_fd, self._slave_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.console_fd = self._slave_fd = None
        if self._sockdir:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None
        return status
