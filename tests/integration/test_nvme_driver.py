"""The pixel NVMe driver (pxi/programs/nvme/blocktest.pxs) on QEMU's NVMe controller,
under TCG: judged by its own serial lines, by the host (hil.blockpattern: checksums,
the disk image), by the mailbox trace (doorbells, ring wrap-around, the reference
replay) and by QEMU's NVMe error tracer."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from hil import blockpattern as bp
from hil import host
from hil.vgpu import trace

from .conftest import REPO, Hil, assert_no_leftovers

BLOCKTEST = REPO / "pxi" / "programs" / "nvme" / "blocktest.pxs"
PLANTED = REPO / "tests" / "programs" / "nvme_planted.pxs"
SEED, WORKERS, RANGE_LBAS, LBA_SIZE, NSZE, QSIZE = 1, 8, 128, 512, 0x8000, 96
PRP_FIRST, XFER = WORKERS * RANGE_LBAS, 0x80000
# QEMU's tracer on the happy path: only the two commands the test makes fail on purpose
EXPECTED_TRACE = [
    r"pci_nvme_err_invalid_lba_range Invalid LBA start=32768 len=8 limit=32768",
    r"pci_nvme_err_req_status cid 56 nsid 1 status 0x4080 opc 0x2",
    r"pci_nvme_err_mdts len 528384",
    r"pci_nvme_err_req_status cid 255 nsid 1 status 0x4002 opc 0x2",
]


ALLOWED = "".join(f"        - '{ln}'\n" for ln in EXPECTED_TRACE)


def scenario(hil: Hil, program: Path, steps: str, profile: str = "q35-tcg-vgpu") -> Path:
    """The nvme kind traces QEMU's NVMe errors and fails a run on a line it does not
    allow: the block test's two deliberate failures are allowed, nothing else."""
    return hil.scenario(
        f"""\
profile: {profile}
timeout: 240
devices:
  - nvme:
      size: 16M
      fill: zero
      serial: PXNVME0
      errors_allowed:
{ALLOWED}gpu:
  program: {program}
  reference: wgpu
steps:
  - expect: '@gpu start'
    timeout: 30
{steps}  - expect: {{regex: '^@gpu end state=3 '}}
    timeout: 60
  - send: shutdown
  - exit: shutdown
""",
    )


def nvme_trace(run_dir: Path) -> list[str]:
    text = (run_dir / "qemu.log").read_text(errors="replace")
    return [ln.strip() for ln in text.splitlines() if ln.startswith("pci_nvme_")]


@pytest.fixture(scope="module")
def happy(tmp_path_factory, image_cache):
    """One run of the block test, shared: it takes a while under TCG."""
    tmp = tmp_path_factory.mktemp("nvme")
    hil = Hil(tmp, image_cache)
    sc = scenario(
        hil,
        BLOCKTEST,
        "  - expect: 'blocktest done errors '\n    timeout: 200\n",
    )
    r = hil("run", str(sc), "--keep-disks", timeout=400)
    yield hil, r
    assert_no_leftovers(hil)


def serial(r) -> str:
    return (r.run_dirs[0] / "serial.log").read_text()


def test_the_run_passes_with_the_reference_replay(happy):
    hil, r = happy
    assert r.code == 0, r.out + r.err
    assert [x["divergence"] for x in r.run["gpu"]["reference"]] == [None, None]
    assert "blocktest done errors 00000000" in serial(r)
    c = subprocess.run(
        hil.cmd("compare", str(r.run_dirs[0])),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=hil.env,
    )
    assert c.returncode == 0 and c.stdout.count("SAME") == 2, c.stdout + c.stderr
    b = json.loads((r.run_dirs[0] / "bridge.json").read_text())
    assert b["external_write_bytes"] > 2 * WORKERS * RANGE_LBAS * LBA_SIZE  # the DMA


def test_identify_lines(happy):
    _, r = happy
    s = serial(r)
    assert re.search(r"nvme: controller 00101b36 bdf \w+ bar0 \w+ irq 3\w", s), s
    for line in (
        "nvme model QEMU NVMe Ctrl",
        "nvme serial PXNVME0",
        "nvme mdts 07 max transfer 00080000",
        f"nvme ns1 blocks {NSZE:08x} lba size {LBA_SIZE:08x}",
        f"nvme io queue pair 1 entries {QSIZE:08x}",
        "flush: Successful Completion (sct 00 sc 00)",
        "dsm deallocate lba 00007ff8 n 00000008 Successful Completion",
    ):
        assert line in s, line


def test_checksums_per_range_equal_the_hosts(happy):
    _, r = happy
    s = serial(r)
    for w in range(WORKERS):
        first = w * RANGE_LBAS
        want = bp.checksum(bp.pattern(SEED, first, LBA_SIZE, RANGE_LBAS))
        line = f"range {w:08x} lba {first:08x} n {RANGE_LBAS:08x} sum {want:08x} errors 00000000"
        assert line in s, (line, s)


def test_read_past_the_end_fails_alone(happy):
    """The last worker's read of LBA NSZE gets LBA Out of Range; the others' re-reads in
    the same round verify (their errors stay 0)."""
    _, r = happy
    s = serial(r)
    assert f"read past the end at lba {NSZE:08x}: LBA Out of Range (sct 00 sc 80)" in s
    assert s.count(" errors 00000000\n") >= WORKERS + 1


def test_prp_cases(happy):
    _, r = happy
    s = serial(r)
    for line in (
        "prp write mdts (list): Successful Completion (sct 00 sc 00)",
        "prp read 64k at +64 (offset, list): Successful Completion (sct 00 sc 00) "
        "mismatches 00000000",
        "prp read 2 pages (prp2): Successful Completion (sct 00 sc 00) mismatches 00000000",
        "prp read mdts (list): Successful Completion (sct 00 sc 00) mismatches 00000000",
        "prp read mdts + 4k: Invalid Field in Command (sct 00 sc 02)",
    ):
        assert line in s, line


def test_disk_holds_exactly_the_pattern(happy):
    _, r = happy
    disk = r.run_dirs[0] / r.run["artifacts"]["nvme0.disk"]
    written = [(0, WORKERS * RANGE_LBAS), (PRP_FIRST, XFER // LBA_SIZE)]
    assert bp.first_mismatch(disk, LBA_SIZE, SEED, written) is None
    # a wrong expectation is caught and named: another seed, or one LBA too many
    m = bp.first_mismatch(disk, LBA_SIZE, SEED + 1, written)
    assert (m.lba, m.offset) == (0, 0)
    m = bp.first_mismatch(disk, LBA_SIZE, SEED, [*written, (PRP_FIRST + XFER // LBA_SIZE, 1)])
    assert m.lba == PRP_FIRST + XFER // LBA_SIZE and m.found == 0


def doorbells(run_dir: Path, bar0: int, offset: int) -> list[int]:
    """Values the GPU wrote to BAR0 + offset, in order (from the mailbox trace)."""
    out = []
    for rec in trace.read(run_dir / "trace.jsonl"):
        if rec["t"] == "run":
            for _seq, _thread, _pc, kind, _width, addr, value, _posted in rec["requests"]:
                if kind == 4 and addr == bar0 + offset:
                    out.append(value)
    return out


def test_both_rings_wrap_with_correct_doorbells(happy):
    """More commands than queue entries: the SQ tail and CQ head doorbells run up to
    QSIZE - 1 and start again from the bottom, several times, never out of range."""
    _, r = happy
    bar0 = int(re.search(r"bar0 ([0-9a-f]+) irq", serial(r)).group(1), 16)
    sq, cq = doorbells(r.run_dirs[0], bar0, 0x1008), doorbells(r.run_dirs[0], bar0, 0x100C)
    for values in (sq, cq):
        assert values and all(0 <= v < QSIZE for v in values), values
        wraps = sum(b < a for a, b in zip(values, values[1:], strict=False))
        assert wraps >= 2, values
    assert sq[-1] == cq[-1]  # every command submitted was reaped


def test_qemu_error_trace_has_only_the_deliberate_failures(happy):
    _, r = happy
    assert nvme_trace(r.run_dirs[0]) == EXPECTED_TRACE


def test_planted_driver_bug_is_caught_by_qemus_error_trace(hil):
    """Every step passes -- the guest notices nothing -- but QEMU's model saw a doorbell
    write to a queue that does not exist: the run fails on that trace line, quoted."""
    sc = scenario(hil, PLANTED, "  - expect: 'blocktest done errors 00000000'\n    timeout: 200\n")
    r = hil("run", str(sc), timeout=400)
    assert "planted bug" in serial(r) and "blocktest done errors 00000000" in serial(r)
    lines = nvme_trace(r.run_dirs[0])
    bad = [ln for ln in lines if ln not in EXPECTED_TRACE]
    assert bad and all(ln.startswith("pci_nvme_ub_db_wr_invalid_sq") for ln in bad), lines
    assert r.code == 1, r.out + r.err
    verdict = r.run["verdict"]
    assert (
        verdict["category"] == "device-error"
        and "pci_nvme_ub_db_wr_invalid_sq" in (verdict["reason"])
    ), verdict


@pytest.mark.skipif(not host.kvm().usable, reason="KVM is not usable here (/dev/kvm)")
def test_the_shipped_scenario_under_kvm_falls_back_to_polling(hil):
    """`hil run scenarios/nvme.yaml --profile q35-kvm-vgpu`: the same scenario, nothing
    chosen by the user.  Where the NVMe's MSI-X reaches the guest the driver keeps
    interrupts; where it does not (this nested KVM) it says so once and polls.  Either
    way: the run passes with the reference replay (whose trace holds the bridge's timeout
    answer), the same tracer lines as under TCG, and the bench metrics."""
    r = hil("run", "scenarios/nvme.yaml", "--profile", "q35-kvm-vgpu", timeout=500)
    assert r.code == 0, r.out + r.err
    s = serial(r)
    assert "blocktest done errors 00000000" in s
    fell_back = re.findall(r"nvme: no interrupt within 000003e8 ms of a command: .*", s)
    assert len(fell_back) <= 1, fell_back
    b = json.loads((r.run_dirs[0] / "bridge.json").read_text())
    # no timeout without the fallback; with it, polling is timed waits (no CPU work)
    assert (b["wait_timeouts"] > 0) == bool(fell_back), b["wait_timeouts"]
    assert nvme_trace(r.run_dirs[0]) == EXPECTED_TRACE
    assert r.run["metrics"]["nvme.qd16.iops"] > 0


def test_4k_lbas(hil):
    """4 KiB LBAs (QEMU logical_block_size=4096): one LBA per command, same pattern, the
    host's checksums and disk check for that LBA size."""
    allowed = [
        "pci_nvme_err_invalid_lba_range Invalid LBA start=4096 len=1 limit=4096",
        *EXPECTED_TRACE[1:],
    ]
    sc = hil.scenario(
        f"""\
profile: {REPO / "tests" / "nvme" / "q35-tcg-vgpu-nvme4k.yaml"}
timeout: 240
devices:
  - nvme:
      size: 16M
      fill: zero
      serial: PXNVME0
      errors_allowed: {allowed}
gpu: {{program: {REPO / "tests" / "programs" / "nvme_4k.pxs"}}}
steps:
  - expect: 'nvme ns1 blocks 00001000 lba size 00001000'
    timeout: 60
  - expect: 'blocktest done errors 00000000'
    timeout: 200
  - send: shutdown
  - exit: shutdown
"""
    )
    r = hil("run", str(sc), "--keep-disks", timeout=400)
    assert r.code == 0, r.out + r.err
    s = serial(r)
    for w in range(WORKERS):
        want = bp.checksum(bp.pattern(SEED, w * 16, 4096, 16))
        assert f"range {w:08x} lba {w * 16:08x} n 00000010 sum {want:08x} errors 00000000" in s
    disk = r.run_dirs[0] / r.run["artifacts"]["nvme0.disk"]
    assert bp.first_mismatch(disk, 4096, SEED, [(0, 8 * 16), (8 * 16, XFER // 4096)]) is None
    assert nvme_trace(r.run_dirs[0]) == allowed


def test_two_namespaces_each_identified_with_its_own_disk(hil):
    """`namespaces: 2`: QEMU's nvme-ns devices on the controller's bus, a fresh disk each;
    the driver identifies both and prints their sizes; namespace 1 carries the block
    test (its disk check passes), namespace 2's disk is checked untouched -- and a check
    that expects writes there fails naming its LBA."""
    sc = hil.scenario(
        f"""\
profile: q35-tcg-vgpu
timeout: 240
devices:
  - nvme:
      size: 16M
      fill: {{random: 5}}
      serial: PXNVME0
      namespaces: 2
      errors_allowed:
{ALLOWED}gpu: {{program: {BLOCKTEST}}}
steps:
  - lines:
      - 'nvme ns1 blocks 00008000 lba size 00000200'
      - 'nvme ns2 blocks 00008000 lba size 00000200'
    timeout: 60
  - expect: 'blocktest done errors 00000000'
    timeout: 200
  - send: shutdown
  - exit: shutdown
checks:
  - disk: {{device: nvme0, seed: 1, written: [[0, 1024], [1024, 1024]]}}
  - disk: {{device: nvme0n2, seed: 1, written: []}}
  - disk: {{device: nvme0n2, seed: 1, written: [[0, 8]]}}
"""
    )
    r = hil("run", str(sc), timeout=400)
    assert r.code == 1, r.out + r.err
    argv = " ".join(r.run["qemu"]["argv"])
    assert "nvme-ns,drive=nvme0n1,nsid=1,bus=nvme0" in argv
    assert "nvme-ns,drive=nvme0n2,nsid=2,bus=nvme0" in argv
    assert [s["status"] for s in r.run["steps"]] == ["passed"] * 4
    checks = [c["outcome"] for c in r.run["checks"]]
    assert checks == ["pass", "pass", "fail"], r.run["checks"]
    assert r.run["checks"][2]["reason"].startswith("nvme0n2: LBA 0 byte 0: expected 0x")
    assert nvme_trace(r.run_dirs[0]) == EXPECTED_TRACE
