"""`kdsweep run` through real Ray Tune: results on disk, resume, retries, refusals.

In-process tests share one session-scoped local Ray; the kill tests start `kdsweep run` as a subprocess with its
own embedded Ray in a new session, and stop exactly that session's processes.
"""

import json
import signal
import os
import subprocess
import sys

import pandas as pd
import pytest

from kdsweep.engine import run_group
from kdsweep.errors import UserError
from kdsweep.space import load_space
from kdsweep.storage import Store
from kdsweep.sweep.driver import run_sweep
from kdsweep.sweep.lock import LOCK_NAME
from kdsweep.sweep.plan import read_records, resume_epoch
from helpers import save_teacher, tiny_space
from processes import kill_session, start, wait_for

pytestmark = pytest.mark.slow


def write_space(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def progress_bytes(root, space):
    store = Store(str(root))
    return {r.run_id: store.read_bytes(f"runs/{r.run_id}/progress.json") for r in space.runs
            if store.exists(f"runs/{r.run_id}/progress.json")}


def test_sweep_writes_tidy_results_and_resumes_only_what_is_missing(ray_session, tmp_path):
    path = write_space(tmp_path, tiny_space(tmp_path / "results"))
    space = load_space(path)
    outcome = run_sweep(space)
    root = tmp_path / "results" / "tiny"
    assert outcome.failed == [] and outcome.root == str(root)

    trials = pd.read_parquet(root / "trials.parquet")
    assert len(trials) == 8 and list(trials.status.unique()) == ["completed"]
    assert list(trials.columns[:10]) == ["student_id", "cell_id", "variant", "title", "loss", "lr", "seed", "teacher",
                                         "student", "status"]
    assert list(zip(trials.variant, trials.loss, trials.seed))[:4] == [
        ("simkd", "l2", 0), ("simkd", "l2", 1), ("simkd", "kl", 0), ("simkd", "kl", 1)]
    assert (trials.epochs_done == 2).all() and trials.best_acc.between(0, 100).all()
    assert trials.teacher_acc.notna().all() and trials.teacher_acc.nunique() == 1
    gated = trials.variant == "labels"
    assert trials[gated].masked_frac.between(0, 1).all() and trials[~gated].masked_frac.isna().all()
    assert {"taps", "gate", "gate_normalise", "temperature", "eval_head", "wall_s"} <= set(trials.columns)
    epochs = pd.read_parquet(root / "epochs.parquet")
    assert len(epochs) == 16 and sorted(epochs.epoch.unique()) == [1, 2]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["ray_version"].startswith("2.60") and manifest["finished_at"]
    assert manifest["teacher"]["trained_by_kdsweep"] and manifest["teacher"]["test_acc"] is not None
    assert set(manifest["checkpoints"]) == set(trials.student_id)
    assert (root / "space.yaml").exists() and not (root / LOCK_NAME).exists()
    results_md = (root / "results.md").read_text()
    assert "| Teacher Arc | Student Arc | Projector type | Distillation Loss |" in results_md
    for png in ("acc_vs_lr.png", "curves.png"):
        assert (root / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Running again trains nothing: finished students are never re-run.
    before = progress_bytes(root, space)
    run_sweep(space, report=False)
    assert progress_bytes(root, space) == before

    # Adding a seed runs only the new cells.
    bigger = load_space(path, ["axes.seed=[0, 1, 2]"])
    run_sweep(bigger, report=False)
    after = progress_bytes(root, bigger)
    assert {k: after[k] for k in before} == before
    trials = pd.read_parquet(root / "trials.parquet")
    assert len(trials) == 12 and list(trials.status.unique()) == ["completed"]


def test_a_resource_request_no_node_can_satisfy_fails_at_once(ray_session, tmp_path):
    teacher = save_teacher(tmp_path / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher).replace("cpu: 1, gpu: 0", "cpu: 64"))
    with pytest.raises(UserError, match="no Ray node can run a trial that asks for resources.cpu=64 and "
                                        "resources.gpu=0: the largest node offers 2 CPUs and 0 GPUs"):
        run_sweep(load_space(path))


def reference_histories(space, tmp_path):
    """Each seed's runs trained in one group in this process, without Ray: what every sweep must reproduce."""
    histories = {}
    for seed in {r.seed for r in space.runs}:
        from kdsweep.sweep.plan import plan_groups

        runs = [r for r in space.runs if r.seed == seed]
        (group,) = plan_groups(space, runs, Store(str(tmp_path / "reference")), max_students=len(runs))
        from dataclasses import replace

        for rec in run_group(replace(group, storage=str(tmp_path / "reference"))):
            histories[rec["run_id"]] = [(e["epoch"], e["test_acc"], e["train_loss"]) for e in rec["history"]]
    return histories


def stored_histories(root, space):
    records = read_records(Store(str(root)), [r.run_id for r in space.runs])
    return {k: [(e["epoch"], e["test_acc"], e["train_loss"]) for e in r.history] for k, r in records.items()}


def test_driver_killed_mid_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    teacher = save_teacher(tmp_path / "teacher.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher, epochs=4, max_students=2))
    space = load_space(path)
    root = tmp_path / "results" / "tiny"
    store = Store(str(root))
    driver = start(["run", str(path), "--no-report"], tmp_path / "first.log")

    def finished_and_interruptible():
        records = read_records(store, [r.run_id for r in space.runs])
        done = [k for k, r in records.items() if r and r.status == "completed"]
        partial = [k for k, r in records.items() if r and r.status == "running" and r.checkpoint
                   and 1 <= r.epochs_done < 4]
        return (done, partial) if done and partial else None

    try:
        wait_for(finished_and_interruptible, 240, "a finished run and a checkpointed partial one")
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        kill_session(driver.pid)
        driver.wait()
    # What the kill left behind (every process of that sweep is gone, so this is a consistent snapshot).
    records = read_records(store, [r.run_id for r in space.runs])
    done = [k for k, r in records.items() if r and r.status == "completed"]
    finished_before = {k: v for k, v in progress_bytes(root, space).items() if k in done}
    checkpointed = {k: resume_epoch(store, k) for k in records if k not in done and resume_epoch(store, k)}
    assert done and checkpointed

    rerun = subprocess.run([sys.executable, "-m", "kdsweep", "run", str(path), "--no-report"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "taking over the lock of a process that is gone" in rerun.stderr
    after = progress_bytes(root, space)
    assert {k: after[k] for k in finished_before} == finished_before  # never re-run
    records = read_records(store, [r.run_id for r in space.runs])
    for run_id, epoch in checkpointed.items():
        resumed = records[run_id].resumed_from
        assert resumed and resumed[0] == epoch, f"{run_id} did not resume from its epoch-{epoch} checkpoint"
    assert {r.status for r in records.values()} == {"completed"}
    assert stored_histories(root, space) == reference_histories(space, tmp_path)


def test_a_killed_trial_process_is_retried_from_its_checkpoint(tmp_path):
    teacher = save_teacher(tmp_path / "teacher.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher, epochs=4, seeds=(0,),
                                            max_students=4))
    space = load_space(path)
    root = tmp_path / "results" / "tiny"
    store = Store(str(root))
    driver = start(["run", str(path), "--no-report"], tmp_path / "run.log")
    try:
        def checkpointed_worker():
            records = read_records(store, [r.run_id for r in space.runs])
            for r in records.values():
                if r and r.status == "running" and r.checkpoint and 1 <= r.epochs_done < 4:
                    return r.pid
            return None

        worker = wait_for(checkpointed_worker, 240, "a trial with a checkpoint")
        os.kill(worker, signal.SIGKILL)
        at_kill = {k: resume_epoch(store, k) for k in (r.run_id for r in space.runs)}
        assert driver.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        kill_session(driver.pid)
    records = read_records(store, [r.run_id for r in space.runs])
    assert {r.status for r in records.values()} == {"completed"}
    assert any(at_kill.values())
    for run_id, epoch in at_kill.items():
        if epoch:  # retried within the same sweep, from (at least) the checkpoint that existed at the kill
            assert records[run_id].resumed_from and records[run_id].resumed_from[0] >= epoch, run_id
    assert stored_histories(root, space) == reference_histories(space, tmp_path)


def run_cli(*args, cwd=None):
    code = ("import sys; from kdsweep.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_gpu_requested_on_a_machine_without_one_is_refused_before_ray_starts(tmp_path):
    teacher = save_teacher(tmp_path / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher).replace("gpu: 0", "gpu: 0.5"))
    out = run_cli("run", str(path))
    assert out.returncode == 2
    assert "resources.gpu is 0.5 but this machine has no usable CUDA GPU" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout.strip() == "NO_RAY"


def test_a_second_run_on_the_same_experiment_is_refused(tmp_path):
    teacher = save_teacher(tmp_path / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "results" / "tiny" / LOCK_NAME
        lock.parent.mkdir(parents=True)
        import socket

        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started_at": 0}))
        out = run_cli("run", str(path))
        assert out.returncode == 2
        assert f"experiment {lock.parent} is in use by another `kdsweep run` (pid {holder.pid}" in out.stderr
        assert out.stdout.strip() == "NO_RAY" and lock.exists()
    finally:
        holder.kill()
