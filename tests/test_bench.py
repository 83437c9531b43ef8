"""`kdsweep bench` runs end to end on tiny models, without Ray or pydantic, and prints its table (no timing asserts:
speed targets live in BENCHMARKS.md, not in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdsweep.bench import PATHS
from kdsweep.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--teacher", "resnet8", "--student", "resnet8", "--classes", "10", "--k", "2", "--steps", "1", "--rounds", "2",
        "--batch-size", "8", "--cache-images", "1", "--threads", "1"]

# Make `import ray` and `import pydantic` fail, then run the CLI: the GPU machine has neither.
_WITHOUT_RAY = (
    "import sys; sys.modules['ray'] = None; sys.modules['pydantic'] = None\n"
    "from kdsweep.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_bench_prints_every_path_without_ray_or_pydantic(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_RAY, "bench", *TINY, "--paths", *PATHS,
         "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table[1:]] == list(PATHS)  # after the header
    assert table[0].startswith("| path | students | student-steps/s | images/s | student-epochs/s | vs reference")
    assert "| reference | 1 |" in done.stdout and "| 1.00x |" in done.stdout
    assert "teacher cache: 162 views (1 images x 162)" in done.stdout
    record = json.loads(out.read_text())
    assert [r["path"] for r in record["results"]] == list(PATHS)
    assert all(r["steps_per_s"] > 0 and r["flops_per_student_step"] > 0 for r in record["results"])
    group = next(r for r in record["results"] if r["path"] == "group")
    cache = next(r for r in record["results"] if r["path"] == "cache")
    assert cache["flops_per_student_step"] < group["flops_per_student_step"]  # no teacher forward on the cache path


def test_bench_refuses_bad_options(capsys):
    assert main(["bench", *TINY, "--paths", "warp"]) == 2
    assert "unknown --paths warp" in capsys.readouterr().err
    assert main(["bench", *TINY, "--k", "0"]) == 2


@pytest.mark.parametrize("flag, value, key, expected", [
    ("--channels-last", "on", "channels_last", True),
    ("--channels-last", "off", "channels_last", False),
    ("--channels-last", "auto", "channels_last", False),  # auto: on for CUDA only
    ("--compile", "off", "compile", False),
    ("--compile", "auto", "compile", False),
    ("--precision", "fp32", "bf16", False),  # (bf16 on the CPU: the bench's peak-FLOP probe alone takes minutes)
    ("--precision", "auto", "bf16", False),
])
def test_bench_switches_reach_the_fast_path_it_runs(tmp_path, flag, value, key, expected):
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--paths", "single", "--rounds", "1", flag, value, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["fast"][key] is expected


@pytest.mark.parametrize("flag", ["--compile", "--channels-last"])
def test_bench_switches_are_on_off_auto(flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", flag, "maybe"])
    assert stop.value.code == 2
    assert f"argument {flag}: invalid choice: 'maybe' (choose from " in capsys.readouterr().err
