"""hil history / hil baseline / scenario name clashes, over a synthetic history."""

from __future__ import annotations

from hil import cli
from hil.history import History

from .nightly_fakes import Nights


def test_same_name_twice_is_invalid_input(tmp_path, capsys):
    for f in ("a.yaml", "b.yaml"):
        (tmp_path / f).write_text(
            "name: same\nprofile: q35-tcg-bios\nsteps:\n  - expect: '@stage ready'\n"
        )
    code = cli.main(["run", str(tmp_path), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "the scenario name 'same' is also the name of" in err
    assert "nothing was run" in err and not (tmp_path / "r").exists()


def test_history_lists_newest_first_and_names_known_scenarios(tmp_path, capsys):
    assert cli.main(["history", "boot", "--results", str(tmp_path)]) == 2
    assert "no run history at" in capsys.readouterr().err
    with History.at(tmp_path) as h:
        n = Nights(h, tmp_path)
        n.night({("boot", "p"): [("pass", {"boot_ms": 61.25, "cpu_idle": 0.995})]})
        n.night({("boot", "p"): [("fail", {})]})
    assert cli.main(["history", "boot", "--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["started", "(UTC)", "profile", "outcome"]
    assert lines[1].split()[3] == "fail" and lines[2].split()[3:6] == ["pass", "61.2", "99.50"]
    assert cli.main(["history", "bot", "--results", str(tmp_path)]) == 2
    assert "Recorded scenarios: boot." in capsys.readouterr().err


def test_baseline_pin_show_unpin(tmp_path, capsys):
    with History.at(tmp_path) as h:
        batch = Nights(h, tmp_path).night({("boot", "p"): [("pass", {"boot_ms": 60})]})
        run_dir = h.recent("boot")[0].run_dir
    assert cli.main(["baseline", "--results", str(tmp_path), "pin", run_dir, "--note", "ok"]) == 0
    assert f"compares with batch {batch}" in capsys.readouterr().out
    assert cli.main(["baseline", "--results", str(tmp_path), "show"]) == 0
    assert f"boot [p] -> {batch}" in capsys.readouterr().out
    assert cli.main(["baseline", "--results", str(tmp_path), "unpin", "boot"]) == 0
    assert "unpinned 1 baseline;" in capsys.readouterr().out
    assert cli.main(["baseline", "--results", str(tmp_path), "pin", "nonsense"]) == 2
    assert "is not a recorded run" in capsys.readouterr().err
