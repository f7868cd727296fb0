"""tools/gpu-bundle's QEMU, firmware and prebuilt images boot a real scenario here, the way
tools/gpu-run uses them on a GPU host: QEMU through the bundle's wrapper (its libraries,
its TCG module), firmware only from the bundle's one `-L` directory, no compiler on PATH.

Regression: the first bundle lacked ipxe's efi-e1000.rom and seabios's bios-256k.bin
(Debian keeps them outside /usr/share/qemu), so `-device e1000` and every BIOS profile
failed on the GPU host; scenarios/devices.yaml needs both.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEVICES = REPO / "scenarios" / "devices.yaml"


def test_the_bundle_boots_devices_yaml_with_its_own_qemu_and_firmware(hil, tmp_path):
    out = tmp_path / "bundle"
    p = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu-bundle"), "--no-wheels", "--xz-preset", "0",
         "--out", str(out), str(DEVICES)],
        cwd=REPO, env=hil.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    home = tmp_path / "home"
    with tarfile.open(out / "qemu.tar.xz") as tar:
        tar.extractall(home, filter="tar")
    data = home / "qemu" / "share" / "qemu"
    for name in ("bios-256k.bin", "qboot.rom", "efi-e1000.rom", "efi-virtio.rom"):
        assert (data / name).is_file(), name
    assert (home / "qemu" / "lib" / "qemu" / "accel-tcg-x86_64.so").is_file()
    assert (home / "qemu" / "vklib" / "libvulkan.so.1").is_file()
    bin_ = tmp_path / "bin"  # with the bundle's QEMU wrappers: no nasm, gcc, ld, objcopy
    bin_.mkdir()
    if shutil.which("setpriv"):
        (bin_ / "setpriv").symlink_to(shutil.which("setpriv"))
    env = {
        **hil.env,
        "PATH": f"{home / 'qemu' / 'bin'}:{bin_}",
        "HIL_QEMU_DATADIR": str(data),
        "PXOS_HIL_PREBUILT": str(out / "images"),
        "PXOS_HIL_CACHE": str(tmp_path / "empty-cache"),
    }
    r = hil("run", str(DEVICES), "--no-history", "--retries", "0", env=env)
    assert r.code == 0, r.out + r.err
    argv = r.run["qemu"]["argv"]
    assert argv[0] == str(home / "qemu" / "bin" / "qemu-system-x86_64")
    assert argv[1:3] == ["-L", str(data)]
