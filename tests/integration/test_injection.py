"""A results path full of QEMU's separators still boots (the values are escaped)."""

from __future__ import annotations

import json


def test_results_path_with_comma_equals_and_space(tmp_path, monkeypatch, image_cache):
    from hil.cli import main

    monkeypatch.setenv("PXOS_HIL_CACHE", str(image_cache))
    sc = tmp_path / "s.yaml"
    sc.write_text(
        "name: odd-path\nprofile: q35-tcg-pvh\ntimeout: 60\n"
        "devices:\n  - nvme: {size: 1M, fill: lba}\n  - nic: {model: e1000}\n"
        "steps:\n  - expect: '@stage ready'\n    timeout: 30\n  - check: pci\n"
    )
    root = tmp_path / "res,bus=nosuchbus id=x"
    assert main(["run", str(sc), "-q", "--results", str(root), "--keep-disks"]) == 0
    (run,) = [json.loads(p.read_text()) for p in root.glob("odd-path/*/run.json")]
    assert run["verdict"]["outcome"] == "pass"
    drive = next(a for a in run["qemu"]["argv"] if a.startswith("file=") and "nvme0" in a)
    assert "res,,bus=nosuchbus id=x" in drive
    assert (root / "odd-path" / run["run_id"] / "nvme0.img").stat().st_size == 1 << 20
