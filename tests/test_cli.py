"""The `kdsweep` command line: validate, dry runs, exit codes (no Ray needed)."""

import json
from pathlib import Path

import pytest

from kdsweep.cli import main

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def test_validate_accepts_every_shipped_space(capsys):
    shipped = (("smoke.yaml", 16, 8), ("full_grid.yaml", 120, 40), ("seed_replication.yaml", 63, 21),
               ("method_comparison.yaml", 30, 10), ("method_comparison_smoke.yaml", 5, 5))
    assert sorted(p.name for p in SPACES.glob("*.yaml")) == sorted(name for name, _, _ in shipped)
    for name, runs, cells in shipped:
        assert main(["validate", str(SPACES / name)]) == 0
        assert f"valid - {runs} runs in {cells} cells" in capsys.readouterr().out


def test_dry_run_prints_cells_groups_and_cost(capsys, tmp_path):
    assert main(["run", str(SPACES / "full_grid.yaml"), "--dry-run", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"experiment simkd-mnv2x2-full-grid -> {tmp_path}/simkd-mnv2x2-full-grid" in out
    assert "40 cells, 120 runs (0 already finished)" in out
    assert "15 trial groups of up to 8 students (resources per trial: 4 CPU, 1 GPU):" in out
    assert "multi            l2         0.01      3  kind=simkd taps=multi\n" in out
    assert "596.2 PFLOP with the teacher shared per group: ~33 minutes of H100 at 30% of peak" in out
    assert "3,325.4 PFLOP if every student re-ran the teacher: ~3.1 hours of H100" in out
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"


def test_set_overrides_reach_the_expansion(capsys, tmp_path):
    assert main(["run", str(SPACES / "smoke.yaml"), "--dry-run", "--set", "axes.seed=[0]", "--set", "group.max_students=2",
                 "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "8 cells, 8 runs" in out and "4 trial groups of up to 2 students" in out


def test_usage_errors_exit_2_with_one_paragraph(capsys, tmp_path):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kdsweep: error: search space {tmp_path / 'nope.yaml'} does not exist") and "Traceback" not in err
    assert main(["status", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a kdsweep experiment (it has no space.yaml)" in capsys.readouterr().err
    assert main(["train", "--student", "resnet32x8", "--dataset", "synthetic"]) == 2
    assert "unknown model 'resnet32x8' (did you mean 'resnet32x4'?)" in capsys.readouterr().err
    assert main(["train", "--student", "resnet8", "--method", "kind=simkd", "--method", "taps=mutli",
                 "--dataset", "synthetic"]) == 2
    assert ("kdsweep: error: --method taps: expected one of last, multi, all_blocks (did you mean 'multi'?), "
            "got 'mutli'. `kdsweep methods` lists every method and its knobs.\n") == capsys.readouterr().err
    assert main(["train", "--student", "resnet8", "--method", "taps=multi", "--dataset", "synthetic"]) == 2
    assert ("kdsweep: error: --method taps: unknown knob 'taps'; method vanilla has no knobs. "
            "`kdsweep methods` lists every method and its knobs.\n") == capsys.readouterr().err  # no teacher: vanilla
    assert main(["train", "--student", "resnet8", "--method", "kind=dkd", "--dataset", "synthetic"]) == 2
    assert "method 'dkd' needs --teacher ARCH and --teacher-checkpoint FILE." in capsys.readouterr().err


def test_train_takes_the_speed_switches_and_records_them(tmp_path, capsys):
    from kdsweep.cli import main

    args = ["train", "--student", "resnet8", "--dataset", "synthetic", "--epochs", "1", "--data", "train_size=64",
            "--data", "test_size=32", "--threads", "1", "--precision", "bf16", "--teacher-cache", "off",
            "--out", str(tmp_path)]
    assert main(args) == 0
    (progress,) = tmp_path.glob("runs/*/progress.json")
    execution = json.loads(progress.read_text())["execution"]
    assert execution["bf16"] is True and execution["teacher"] == "none" and execution["compile"] is False
    with pytest.raises(SystemExit):
        main([*args, "--compile", "sometimes"])
    assert "argument --compile: invalid choice: 'sometimes'" in capsys.readouterr().err
