"""Storage that fills up or refuses writes: a clear error naming the path, and what was written stays readable."""

import json
import re
import subprocess
import sys
from contextlib import contextmanager

import pandas as pd
import pytest

from kdsweep.cli import main
from kdsweep.engine.checkpoint import CheckpointDir
from kdsweep.storage import Store
from helpers import cli, save_teacher, tiny_space


@contextmanager
def tmpfs(path, options):
    """A real small (or read-only) filesystem; needs root, which the dev machines and CI have."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def kdsweep(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kdsweep", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_disk_full_names_the_path_and_keeps_earlier_results(tmp_path, capsys):
    # resnet8 checkpoints are ~0.65 MB (weights + momentum): two fit in 1.6 MB, the third does not.
    with tmpfs(tmp_path / "full", "size=1600k") as out:
        rc, _, err = cli(capsys, "train", "--student", "resnet8", "--dataset", "synthetic", "--data", "train_size=64",
                         "--data", "test_size=32", "--epochs", "4", "--checkpoint-every", "1", "--threads", "1",
                         "--out", str(out))
        assert rc == 2, err
        assert "Traceback" not in err
        (run_dir,) = (out / "runs").iterdir()
        assert f"cannot write {run_dir}/checkpoints/epoch-0003.pt: No space left on device" in err
        assert "everything written there before is intact" in err
        progress = json.loads((run_dir / "progress.json").read_text())
        assert progress["epochs_done"] == 2 and len(progress["history"]) == 2
        state = CheckpointDir(Store(str(out)), f"runs/{run_dir.name}/checkpoints").load_latest()
        assert state["record"]["epochs_done"] == 2
        assert not [p for p in run_dir.rglob("*.tmp")], "no half-written temporary files are left"


def test_read_only_storage_is_refused_before_anything_starts(tmp_path):
    teacher = save_teacher(tmp_path / "teacher.pth")
    with tmpfs(tmp_path / "ro", "ro,size=64k") as storage:
        space = tmp_path / "space.yaml"
        space.write_text(tiny_space(storage, teacher=teacher))
        done = kdsweep("run", str(space))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"cannot write to the experiment folder {storage}/tiny: Read-only file system" in done.stderr


RACER = """
import os, sys, time
from pathlib import Path
from kdsweep.errors import UserError
from kdsweep.storage import Store
from kdsweep.sweep.lock import ExperimentLock
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    with ExperimentLock(Store(sys.argv[1])):
        print("held", flush=True)
        while not go.with_name("release").exists():  # held until every other racer has been refused
            time.sleep(0.01)
except UserError:
    print("refused", flush=True)
"""


def test_runs_racing_for_a_dead_holders_lock_leave_exactly_one_holder(tmp_path):
    """Six drivers start at once on an experiment whose lock names a process that is gone: one takes it over,
    the others are refused while it lives (the kernel's flock, not a pid check, decides)."""
    import socket

    from kdsweep.sweep.lock import LOCK_NAME

    root = tmp_path / "exp"
    root.mkdir()
    (root / LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname(), "started_at": 0}))
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(root), str(go)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        assert [r.stdout.readline().strip() for r in racers] == ["ready"] * 6  # all imported, waiting for the start
        go.write_text("")
        said = sorted(r.stdout.readline().strip() for r in racers)
        (tmp_path / "release").write_text("")
        errors = [r.communicate(timeout=60)[1] for r in racers]
    finally:
        for r in racers:
            r.kill()
    assert said == ["held"] + ["refused"] * 5, errors
    assert sum("taking over the lock of a process that is gone" in err for err in errors) == 1
    assert not (root / LOCK_NAME).exists()


def test_a_report_on_a_full_disk_names_the_path_and_keeps_the_tables(tmp_path, capsys):
    """The inputs fit, the plots do not: `kdsweep report` exits 2 naming the file, without a traceback, and the
    tables it read are untouched."""
    from test_report import golden_trials, manifest, write_experiment

    source = write_experiment(tmp_path / "source", golden_trials(), manifest())
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    room_kb = sum(len(data) // 1024 + 8 for data in before.values()) + 8  # the inputs, page-rounded, and 8 kB
    with tmpfs(tmp_path / "full", f"size={room_kb}k") as out:
        exp = out / "exp"
        exp.mkdir()
        for name, data in before.items():
            (exp / name).write_bytes(data)
        rc, _, err = cli(capsys, "report", str(exp))
        assert rc == 2, err
        assert "Traceback" not in err
        assert f"cannot write {exp}/plots/acc_vs_lr.png: No space left on device" in err
        assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before
        assert not list(exp.rglob("*.tmp"))


def _killed_while_writing(args, folder, pattern, log, when=lambda: True):
    """Run `kdsweep train ARGS` and SIGKILL it inside a write of `folder` whose temporary name matches `pattern`
    and which starts while `when()` holds (Store writes a temporary file, then renames it; processes.py freezes
    the writer the moment the kernel reports the file). Returns whether that moment came."""
    from processes import kill_session, start, stop_inside_a_write

    proc = start(["train", *args], log)
    try:
        return stop_inside_a_write(folder, pattern, proc.pid, timeout=240, when=when) is not None
    finally:
        kill_session(proc.pid)


def test_killed_during_checkpoint_and_progress_writes_a_run_ends_like_an_uninterrupted_one(tmp_path):
    """SIGKILL lands while the epoch-2 and then the epoch-4 checkpoint is being written, then while the progress
    record after epoch 4 is: each restart resumes from the last good checkpoint (1, 3, 4), leaves no debris,
    and the final weights and history are the uninterrupted run's."""
    from test_engine import assert_same_run

    args = ["--student", "resnet8", "--dataset", "synthetic", "--data", "train_size=64", "--data", "test_size=32",
            "--batch-size", "32", "--epochs", "5", "--checkpoint-every", "1", "--threads", "1"]
    assert main(["train", *args, "--out", str(tmp_path / "straight")]) == 0  # in-process: the same code, one start less
    (run_name,) = (p.name for p in (tmp_path / "straight" / "runs").iterdir())
    out = tmp_path / "killed"
    args += ["--out", str(out)]
    run_dir, checkpoints = out / "runs" / run_name, out / "runs" / run_name / "checkpoints"
    checkpoints.mkdir(parents=True)  # the same run id: its folders exist before the first watch starts
    kills = [
        _killed_while_writing(args, checkpoints, ".epoch-0002.pt.*.tmp", tmp_path / "kill0.log"),
        _killed_while_writing(args, checkpoints, ".epoch-0004.pt.*.tmp", tmp_path / "kill1.log"),
        _killed_while_writing(args, run_dir, ".progress.json.*.tmp", tmp_path / "kill2.log",
                              when=(checkpoints / "epoch-0004.pt.sha256").exists),
    ]
    assert kills == [True, True, True], "every kill landed inside a write"
    assert main(["train", *args]) == 0
    record = json.loads((run_dir / "progress.json").read_text())
    assert record["status"] == "completed" and record["resumed_from"] == [1, 3, 4]
    assert_same_run(tmp_path / "straight", out, run_name)
    assert not list(out.rglob("*.tmp")), "the writes the kills cut short left no debris behind"


@pytest.mark.slow
def test_disk_full_inside_a_sweep_stops_it_at_once_and_a_rerun_finishes_it(tmp_path, capsys, ray_session):
    """A UserError inside a trial (here: no space for a checkpoint) ends the whole sweep with its message and exit 2,
    without Tune's retries; once there is room, the same command finishes the sweep."""
    teacher = save_teacher(tmp_path / "teacher.pth")
    # 2 groups of 4 resnet8 students, ~0.65 MB per checkpoint: the first epoch's 8 checkpoints need ~5 MB.
    with tmpfs(tmp_path / "full", "size=3000k") as storage:
        path = tmp_path / "space.yaml"
        path.write_text(tiny_space(storage, teacher=teacher, epochs=3, max_failures=2))
        rc, out, err = cli(capsys, "run", str(path), "--no-report")
        assert rc == 2, err[-2000:]
        (message,) = [line for line in err.splitlines() if line.startswith("kdsweep: error: ")]
        assert re.fullmatch(r"kdsweep: error: group g-s[01]-\S+ stopped the sweep: cannot write "
                            + re.escape(str(storage)) + r"/tiny/runs/\S+/checkpoints/epoch-000\d\.pt: No space "
                            r"left on device\. .*running the same command again resumes from it\.", message), message
        assert "Traceback" not in out + err and "errored" not in out + err, "Tune retried or showed a trial error"
        subprocess.run(["mount", "-o", "remount,size=20m", str(storage)], check=True)
        rc, out, err = cli(capsys, "run", str(path), "--no-report")
        assert rc == 0, err[-2000:]
        trials = pd.read_parquet(storage / "tiny" / "trials.parquet")
        assert len(trials) == 8 and set(trials.status) == {"completed"}, trials
