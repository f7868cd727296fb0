"""`hil run scenarios/nvme.yaml`, the quickstart's command, end to end under TCG: and the
same scenario with wrong expectations, which must fail and say where (issue 10)."""

from __future__ import annotations

import json

import pytest

from .conftest import REPO


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, image_cache):
    from .conftest import Hil

    hil = Hil(tmp_path_factory.mktemp("nvme"), image_cache)
    r = hil("run", "scenarios/nvme.yaml", timeout=600)
    return r


def test_the_shipped_nvme_scenario_passes(shipped):
    r = shipped
    assert r.code == 0, r.out + r.err
    run = r.run
    checks = {c["name"]: c for c in run["checks"]}
    assert [c["outcome"] for c in run["checks"]] == ["pass", "pass", "pass"]
    assert set(checks) == {"gpu-reference", "block-sums", "disk"}
    assert "8 range checksums equal the host's" in checks["block-sums"]["reason"]
    assert "2048 written LBAs hold the pattern" in checks["disk"]["reason"]
    m = run["metrics"]
    assert m["cpu_idle"] >= 0.9 and m["gpu.denied"] == 0 and m["gpu.events"] > 0
    # the bench phase: QD16 amortises a round's cost over 16 commands
    for qd in (1, 16):
        assert m[f"nvme.qd{qd}.iops"] > 0 and m[f"nvme.qd{qd}.mbps"] > 0
        assert 0 < m[f"nvme.qd{qd}.lat_p50_ms"] <= m[f"nvme.qd{qd}.lat_p99_ms"]
    assert m["nvme.qd16.iops"] > 2 * m["nvme.qd1.iops"]
    assert {x["metric"] for x in run["limits"]} >= {"nvme.qd1.iops", "nvme.qd16.iops"}
    assert all(x["ok"] for x in run["limits"]), run["limits"]
    argv = run["qemu"]["argv"]
    assert "pci_nvme_err_*" in argv and "pci_nvme_ub_*" in argv
    # under the guest IOMMU (issue 15): the honest driver's DMA all lands in VRAM
    assert "intel-iommu,intremap=off" in argv and m["gpu.dma_blocked"] == 0


def test_wrong_expectations_fail_and_name_the_block(hil):
    text = (REPO / "scenarios" / "nvme.yaml").read_text()
    program = REPO / "pxi" / "programs" / "nvme" / "blocktest.pxs"
    text = (
        text.replace("name: nvme\n", "")
        .replace("../pxi/programs/nvme/blocktest.pxs", str(program))
        .replace("reference: wgpu", "reference: none")
        .replace("{device: nvme0, seed: 1, ranges: 8}", "{device: nvme0, seed: 2, ranges: 8}")
        .replace("written: [[0, 1024], [1024, 1024]]", "written: [[0, 1000], [1024, 1024]]")
    )
    r = hil("run", str(hil.scenario(text)), timeout=600)
    assert r.code == 1, r.out + r.err
    run = r.run
    v = run["verdict"]
    assert v["category"] == "block-sums" and v["step_label"] == "block-sums"
    assert "range at LBA 0 (128 LBAs): sum" in v["reason"] and "the host computes" in v["reason"]
    disk = next(c for c in run["checks"] if c["name"] == "disk")
    assert disk["outcome"] == "fail"
    assert disk["reason"].startswith("nvme0: LBA 1000 byte 0: expected 0x")
    assert "a block the guest should not have written" in disk["reason"]
    json.dumps(run)
