"""The GPU-host path (tools/gpu-bundle + tools/gpu-run, docs/gpu-host.md) on this machine:
prebuilt images where the compilers are missing, QEMU's firmware from another directory,
and a host whose wgpu finds no adapter (an infrastructure error that says so).

CI has no GPU; these run the same code paths on lavapipe, as the GPU host runs them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hil import image as pximage
from hil.plan import make_plan
from hil.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "scenarios" / "gpu-hello.yaml"


def _toolless_path(tmp: Path) -> str:
    """A PATH with QEMU and the process helpers but no nasm/gcc/ld/objcopy."""
    bin_ = tmp / "bin"
    bin_.mkdir()
    for prog in ("qemu-system-x86_64", "qemu-img", "setpriv"):
        where = shutil.which(prog)
        if where:
            (bin_ / prog).symlink_to(where)
    for prog in ("nasm", "gcc", "ld", "objcopy"):
        assert not (bin_ / prog).exists()
    return str(bin_)


def test_runs_from_a_prebuilt_image_without_compilers_and_firmware_elsewhere(hil, tmp_path):
    pre = tmp_path / "prebuilt"
    pre.mkdir()
    plan = make_plan(load_scenario(HELLO))
    got = pximage.export_prebuilt(plan.recipe, pre, cache_root=Path(hil.env["PXOS_HIL_CACHE"]))
    data = tmp_path / "qemu-data"
    data.mkdir()
    for f in Path("/usr/share/qemu").iterdir():
        if f.suffix in (".bin", ".rom"):
            (data / f.name).symlink_to(f.resolve())
    env = {
        **hil.env,
        "PATH": _toolless_path(tmp_path),
        "PXOS_HIL_PREBUILT": str(pre),
        "PXOS_HIL_CACHE": str(tmp_path / "empty-cache"),  # nothing to build from
        "HIL_QEMU_DATADIR": str(data),
    }
    r = hil("run", str(HELLO), "--no-history", env=env)
    assert r.code == 0, r.out + r.err
    run = r.run
    assert run["image"]["key"] == got.name, run["image"]
    argv = run["qemu"]["argv"]
    assert argv[1:3] == ["-L", str(data)] and str(data / "qboot.rom") in argv, argv
    # and the plain error, naming the fix, once the prebuilt image does not match
    env["PXOS_HIL_PREBUILT"] = str(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    r = hil("run", str(HELLO), "--no-history", "--retries", "0", env=env)
    assert r.code == 3, r.out + r.err
    assert "No prebuilt image" in r.out + r.err and "tools/gpu-bundle" in r.out + r.err


@pytest.mark.wgpu
def test_no_wgpu_adapter_is_an_infrastructure_error_that_says_so(hil):
    env = {
        **hil.env,
        # hide every Vulkan ICD and EGL vendor: wgpu then finds no adapter at all
        "VK_DRIVER_FILES": "/nonexistent/icd.json",
        "VK_ICD_FILENAMES": "/nonexistent/icd.json",
        "__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent/egl.json",
    }
    r = hil("run", str(HELLO), "--no-history", "--retries", "0", env=env)
    assert r.code == 3, r.out + r.err  # infrastructure, not a failed test
    text = r.out + r.err
    assert "the vGPU bridge crashed: BackendError: no wgpu adapter found" in text, text
    assert os.path.exists(r.run_dirs[0] / "bridge.log")
