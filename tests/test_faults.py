"""Storage that fills up or refuses writes: a clear error naming the path, and what was written stays readable."""

import json
import subprocess
import sys
from contextlib import contextmanager

import pytest

from kdsweep.engine.checkpoint import CheckpointDir
from kdsweep.storage import Store
from helpers import save_teacher, tiny_space


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


def test_disk_full_names_the_path_and_keeps_earlier_results(tmp_path):
    # resnet8 checkpoints are ~0.65 MB (weights + momentum): two fit in 1.6 MB, the third does not.
    with tmpfs(tmp_path / "full", "size=1600k") as out:
        done = kdsweep("train", "--student", "resnet8", "--dataset", "synthetic", "--data", "train_size=64",
                       "--data", "test_size=32", "--epochs", "4", "--checkpoint-every", "1", "--threads", "1",
                       "--out", str(out))
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        (run_dir,) = (out / "runs").iterdir()
        assert f"cannot write {run_dir}/checkpoints/epoch-0003.pt: No space left on device" in done.stderr
        assert "everything written there before is intact" in done.stderr
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
while not go.exists():
    time.sleep(0.001)
try:
    with ExperimentLock(Store(sys.argv[1])):
        print("held", flush=True)
        time.sleep(1.5)
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
        import time

        time.sleep(3)  # every racer imported kdsweep and waits for the start
        go.write_text("")
        outputs = [r.communicate(timeout=60) for r in racers]
    finally:
        for r in racers:
            r.kill()
    said = sorted(out.strip() for out, _ in outputs)
    assert said == ["held"] + ["refused"] * 5, outputs
    assert sum("taking over the lock of a process that is gone" in err for _, err in outputs) == 1
    assert not (root / LOCK_NAME).exists()


def test_a_report_on_a_full_disk_names_the_path_and_keeps_the_tables(tmp_path):
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
        done = kdsweep("report", str(exp))
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert f"cannot write {exp}/plots/acc_vs_lr.png: No space left on device" in done.stderr
        assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before
        assert not list(exp.rglob("*.tmp"))


def _killed_while_writing(args, out, pattern, after, log):
    """Start `kdsweep train ARGS --out OUT` and SIGKILL it the moment a new temporary file matching `pattern`
    exists (a write in flight: Store writes a temporary file, then renames it) once a file matching `after`
    does; returns whether that moment came."""
    import os
    import signal
    import time

    from processes import kill_session, start

    before = set(out.glob(pattern))  # what an earlier kill left (the run deletes it when it resumes)
    proc = start(["train", *args, "--out", str(out)], log)
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if set(out.glob(pattern)) - before and any(out.glob(after)):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
        return False
    finally:
        kill_session(proc.pid)


def test_killed_during_checkpoint_and_progress_writes_a_run_ends_like_an_uninterrupted_one(tmp_path):
    """SIGKILL lands while the epoch-2 and then the epoch-4 checkpoint is being written, then while the progress
    record after epoch 4 is: each restart resumes from the last good checkpoint (1, 3, 4), leaves no debris,
    and the final weights and history are the uninterrupted run's."""
    from test_engine import assert_same_run

    args = ["--student", "resnet8x4", "--dataset", "synthetic", "--data", "train_size=64", "--data", "test_size=32",
            "--batch-size", "32", "--epochs", "5", "--checkpoint-every", "1", "--threads", "1"]
    straight = kdsweep("train", *args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    checkpoints = "runs/*/checkpoints"
    kills = [
        _killed_while_writing(args, out, f"{checkpoints}/.epoch-0002.pt.*.tmp", "runs/*", tmp_path / "kill0.log"),
        _killed_while_writing(args, out, f"{checkpoints}/.epoch-0004.pt.*.tmp", "runs/*", tmp_path / "kill1.log"),
        _killed_while_writing(args, out, "runs/*/.progress.json.*.tmp", f"{checkpoints}/epoch-0004.pt.sha256",
                              tmp_path / "kill2.log"),
    ]
    assert kills == [True, True, True], "every kill landed inside a write"
    resumed = kdsweep("train", *args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    (run_dir,) = (out / "runs").iterdir()
    record = json.loads((run_dir / "progress.json").read_text())
    assert record["status"] == "completed" and record["resumed_from"] == [1, 3, 4]
    assert_same_run(tmp_path / "straight", out, run_dir.name)
    assert not list(out.rglob("*.tmp")), "the writes the kills cut short left no debris behind"
