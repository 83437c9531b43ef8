"""`kdsweep run` through real Ray Tune: results on disk, resume, retries, refusals.

In-process tests share one session-scoped local Ray; the kill tests start `kdsweep run` as a subprocess with its
own embedded Ray in a new session, and stop exactly that session's processes. Those are marked slow; the refusals
that come before Ray starts and the ETA's arithmetic run in the fast suite.
"""

import hashlib
import json
import re
import signal
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kdsweep.engine import run_group
from kdsweep.errors import UserError
from kdsweep.space import load_space
from kdsweep.storage import Store
from kdsweep.sweep.driver import run_sweep
from kdsweep.sweep.lock import LOCK_NAME, ExperimentLock, is_held
from kdsweep.sweep.plan import read_records, resume_epoch
from kdsweep.sweep.results import trials_frame
from helpers import cli, history_key, save_teacher, tiny_space, write_space
from processes import (is_loopback, kill_session, listening_sockets, session_pids, start, stop_inside_a_write,
                       wait_for)

KILL_ATTEMPTS = 5  # runs of the driver in which a kill must land inside a given write (each try is a few seconds)


def progress_bytes(root, space):
    store = Store(str(root))
    return {r.run_id: store.read_bytes(f"runs/{r.run_id}/progress.json") for r in space.runs
            if store.exists(f"runs/{r.run_id}/progress.json")}


@pytest.mark.slow
def test_sweep_writes_tidy_results_and_resumes_only_what_is_missing(ray_session, tmp_path, capsys):
    path = write_space(tmp_path, tiny_space(tmp_path / "results"))
    space = load_space(path)
    outcome = run_sweep(space)
    root = tmp_path / "results" / "tiny"
    assert outcome.failed == [] and outcome.root == str(root)
    assert "kdsweep: training the teacher resnet8 (1 epoch)\n" in capsys.readouterr().out

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
    last = epochs[epochs.epoch == 2].set_index("student_id")  # best so far and its epoch, per student per epoch
    indexed = trials.set_index("student_id")
    assert (last.best_epoch == indexed.best_epoch.loc[last.index]).all()
    assert (last.best_acc == indexed.best_acc.loc[last.index]).all()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["ray_version"].startswith("2.60") and manifest["finished_at"]
    assert manifest["report"]["runs_per_cell"] == {cell: 2 for cell in trials.cell_id}  # seeds per cell, for the report
    assert manifest["teacher"]["trained_by_kdsweep"] and manifest["teacher"]["test_acc"] is not None
    teacher_run = space.teacher.training_run.run_id
    assert set(manifest["checkpoints"]) == set(trials.student_id) | {teacher_run}
    teacher_file = (root / "runs" / teacher_run / "final.pt").read_bytes()
    assert manifest["teacher"]["sha256"] == hashlib.sha256(teacher_file).hexdigest()
    # Each trial's last Tune checkpoint points at its students' final kdsweep checkpoints.
    by_group = trials.groupby(trials.student_id.map(lambda k: json.loads(
        (root / "runs" / k / "progress.json").read_text())["group_id"])).student_id
    for group_id, students in by_group:
        assert tune_pointer_epochs(root, group_id) == {k: 2 for k in students}
    assert (root / "space.yaml").exists() and not (root / LOCK_NAME).exists()
    results_md = (root / "results.md").read_text()
    assert "| Teacher Arc | Student Arc | Projector type | Distillation Loss |" in results_md
    for png in ("acc_vs_lr.png", "curves.png"):
        assert (root / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Status and report read the stored results, also through a URI.
    from kdsweep.cli import main

    capsys.readouterr()
    assert main(["status", str(root)]) == 0
    assert "8/8 students done, 0 running, 0 pending, 16/16 student-epochs" in capsys.readouterr().out
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(root)], stdout=subprocess.PIPE, text=True)
    try:  # while a sweep holds the experiment, status says so and how long it has been going
        assert holder.stdout.readline().strip() == "locked"
        assert main(["status", str(root)]) == 0
        out = capsys.readouterr().out
        assert "- a sweep is running" in out and re.search(r"16/16 student-epochs, elapsed \d+s\n", out), out
    finally:
        holder.kill()
        holder.wait()
    (root / "results.md").unlink()
    assert main(["report", f"file://{root}", "--format", "csv"]) == 0
    assert "| Teacher Arc | Student Arc |" in capsys.readouterr().out
    assert (root / "results.md").exists() and (root / "cells.csv").read_text().count("\n") == 5

    # Running again trains nothing: finished students are never re-run.
    before = progress_bytes(root, space)
    run_sweep(space, report=False)
    assert progress_bytes(root, space) == before

    # Adding a seed runs only the new cells; without --verbose, kdsweep's lines are all the terminal shows.
    bigger = load_space(path, ["axes.seed=[0, 1, 2]"])
    capsys.readouterr()
    assert main(["run", str(path), "--set", "axes.seed=[0, 1, 2]", "--no-report"]) == 0
    shown = capsys.readouterr()
    assert "Trial status" not in shown.out + shown.err and "╭" not in shown.out + shown.err, shown  # Tune's tables
    assert f"kdsweep: tiny: 12 runs: 12 completed; tables in {root}/trials.parquet\n" in shown.out, shown.out
    after = progress_bytes(root, bigger)
    assert {k: after[k] for k in before} == before
    trials = pd.read_parquet(root / "trials.parquet")
    assert len(trials) == 12 and list(trials.status.unique()) == ["completed"]


@pytest.mark.slow
def test_a_resource_request_no_node_can_satisfy_fails_at_once(ray_session, tmp_path):
    teacher = save_teacher(tmp_path / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher).replace("cpu: 1, gpu: 0", "cpu: 64"))
    with pytest.raises(UserError, match="no Ray node can run a trial that asks for resources.cpu=64 and "
                                        "resources.gpu=0: the largest node offers 2 CPUs and 0 GPUs"):
        run_sweep(load_space(path))


@pytest.mark.slow
def test_a_diverged_teacher_stops_the_sweep_and_says_so_every_time(ray_session, tmp_path, capsys):
    """At an lr near float32's largest, the teacher's loss is nan in its second epoch: exit 2 naming the epoch and
    the lr, `status` says so, and running again refuses at once instead of "resuming" it forever."""
    path = write_space(tmp_path, tiny_space(tmp_path / "results").replace(
        "train: {epochs: 1, lr: 0.05,", "train: {epochs: 3, lr: 1.0e+38,"))
    expected = ("kdsweep: error: the teacher resnet8 diverged: its training loss was not finite in epoch 2 of 3 "
                "(teacher.train.lr = 1e+38), so no student can be distilled from it. Lower teacher.train.lr")
    rc, out, err = cli(capsys, "run", str(path), "--no-report")
    assert rc == 2 and expected in err and "Traceback" not in err, err[-2000:]
    rc, out, _ = cli(capsys, "status", str(tmp_path / "results" / "tiny"))
    assert rc == 0 and expected.replace("kdsweep: error: ", "  teacher: ") in out and "to continue" not in out, out
    rc, out, err = cli(capsys, "run", str(path), "--no-report")
    assert rc == 2 and expected in err and "training the teacher" not in out, "the diverged teacher trained again"


def reference_histories(space, tmp_path):
    """The same space trained in this process without Ray and without interruption: teacher first (when the space
    trains one), then each seed's runs in one group. Every interrupted sweep must end with exactly these numbers."""
    from dataclasses import replace

    from kdsweep.engine import TeacherSpec
    from kdsweep.sweep.plan import plan_groups

    reference = tmp_path / "reference"
    teacher = space.teacher.spec
    histories = {}
    if space.teacher.training_run is not None:
        (teacher_group,) = plan_groups(space, [space.teacher.training_run], Store(str(reference)), 1, teacher=False)
        (rec,) = run_group(replace(teacher_group, storage=str(reference)))
        histories[rec["run_id"]] = history_key(rec["history"])
        teacher = TeacherSpec(teacher.arch, str(reference / "runs" / rec["run_id"] / "final.pt"))
    for seed in sorted({r.seed for r in space.runs}):
        runs = [r for r in space.runs if r.seed == seed]
        (group,) = plan_groups(space, runs, Store(str(reference)), max_students=len(runs))
        for rec in run_group(replace(group, storage=str(reference), teacher=teacher)):
            histories[rec["run_id"]] = history_key(rec["history"])
    return histories


def tune_pointer_epochs(root, group_id) -> dict[str, int]:
    """Epochs done per student in the newest Tune checkpoint of the group's trial (kdsweep-group.json), if any."""
    pointers = sorted(root.glob(f"tune/*/{group_id}/checkpoint_*/kdsweep-group.json"))
    if not pointers:
        return {}
    try:
        students = json.loads(pointers[-1].read_text())["students"]
    except (OSError, ValueError):  # being written
        return {}
    return {run_id: p["epochs_done"] for run_id, p in students.items()}


def stored_histories(root, run_ids):
    records = read_records(Store(str(root)), run_ids)
    return {k: history_key(r.history) for k, r in records.items()}


def command_name(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")[-40:]


def assert_loopback_only(driver: int) -> None:
    """Every port that a process of `driver`'s session (the driver, its embedded Ray, the trials) listens on is on
    127.0.0.1 (or ::1)."""
    held = listening_sockets(session_pids(driver))
    exposed = {f"{command_name(pid)} ({pid})": [a for a in addresses if not is_loopback(a)] for pid, addresses in held.items()}
    assert not any(exposed.values()), f"listening beyond loopback: {exposed}"
    # The driver, the GCS, the raylet, its two agents and the trials' workers each serve gRPC.
    assert driver in held and len(held) >= 5, held


def assert_gone_soon(driver: int, seconds: float) -> None:
    """`driver` was just SIGKILLed: within `seconds`, no process of its session is left (no port stays open)."""
    try:
        wait_for(lambda: not session_pids(driver), seconds, "the embedded Ray to end with its driver", interval=0.2)
    except TimeoutError:
        left = {pid: command_name(pid) for pid in session_pids(driver)}
        raise AssertionError(f"{seconds:g} s after the driver's SIGKILL these still live: {left}, listening on "
                             f"{listening_sockets(list(left))}") from None


@pytest.mark.slow
def test_a_sweep_killed_again_and_again_ends_exactly_like_an_uninterrupted_one(tmp_path):
    """The driver SIGKILLed during teacher training, then mid-sweep; then a trial's worker SIGKILLed inside a sweep,
    just after its trial reported a Tune checkpoint: Tune retries the trial from that checkpoint.

    Mid-sweep, before the kill, every listening socket of the driver's embedded Ray is on loopback; within 10 s of
    the kill no process of it is left.

    Groups: seed 0 has four students, seed 1 two (the KL cells of seed 1 are excluded), so seed 1 finishes first
    while seed 0 is still mid-way: the second kill finds finished and checkpointed-but-unfinished students.
    """
    path = write_space(tmp_path, tiny_space(tmp_path / "results", epochs=8, extra="exclude: [{seed: 1, loss: kl}]")
                       .replace("train: {epochs: 1,", "train: {epochs: 3,"))
    space = load_space(path)
    teacher_id = space.teacher.training_run.run_id
    ids = [teacher_id] + [r.run_id for r in space.runs]
    root = tmp_path / "results" / "tiny"
    store = Store(str(root))

    def records():
        return read_records(store, ids)

    def sweep_until(condition, what, log, ports=False):
        driver = start(["run", str(path), "--no-report"], tmp_path / log)
        try:
            wait_for(condition, 240, what)
            if ports:
                assert_loopback_only(driver.pid)
            os.kill(driver.pid, signal.SIGKILL)
            if ports:
                assert_gone_soon(driver.pid, seconds=10)
        finally:
            kill_session(driver.pid)
            driver.wait()

    # 1. Killed while training the teacher, after its first checkpoint.
    sweep_until(lambda: (r := records()[teacher_id]) and r.checkpoint and r.status == "running",
                "the teacher's first checkpoint", "run1.log")
    teacher_epoch = resume_epoch(store, teacher_id)
    assert teacher_epoch >= 1 and records()[teacher_id].status != "completed"

    # 2. Killed mid-sweep: some students finished, others checkpointed but unfinished.
    def finished_and_partial():
        recs = records()
        students = [recs[r.run_id] for r in space.runs]
        return (any(r and r.status == "completed" for r in students)
                and any(r and r.status == "running" and r.checkpoint for r in students))

    sweep_until(finished_and_partial, "a finished student and a checkpointed unfinished one", "run2.log", ports=True)
    assert records()[teacher_id].resumed_from == [teacher_epoch], "the teacher resumed from its checkpoint"
    recs = records()
    finished = {k for k, r in recs.items() if r and r.status == "completed" and k != teacher_id}
    frozen = {k: store.read_bytes(f"runs/{k}/progress.json") for k in finished}
    checkpointed = {k: resume_epoch(store, k) for k in ids if k not in finished and k != teacher_id
                    and resume_epoch(store, k)}
    assert finished and checkpointed

    # 3. A trial's worker process killed inside a sweep that is then left to finish.
    driver = start(["run", str(path), "--no-report"], tmp_path / "run3.log")
    try:
        last = space.runs[0].recipe.epochs

        def worker_with_checkpoint():
            """A resumed student whose new checkpoint its trial has just reported to Tune, with two epochs to go."""
            for k, epoch in checkpointed.items():
                r = records()[k]
                reported = tune_pointer_epochs(root, r.group_id).get(k, 0)
                if r.status == "running" and r.resumed_from and epoch < reported == r.epochs_done <= last - 2:
                    return k, r.pid, reported
            return None

        killed_run, worker, _ = wait_for(worker_with_checkpoint, 240, "a resumed student's next checkpoint")
        time.sleep(0.3)  # into the next epoch: Tune commits a reported checkpoint just after the report returns
        os.kill(worker, signal.SIGKILL)
        # What the dead worker left (Ray needs seconds to start the retry): its students' statuses and checkpoints.
        group = [k for k, r in records().items() if r and r.pid == worker]
        at_kill = {k: (records()[k].status, resume_epoch(store, k)) for k in group}
        assert driver.wait(timeout=300) == 0, (tmp_path / "run3.log").read_text()[-3000:]
    finally:
        kill_session(driver.pid)
    log3 = (tmp_path / "run3.log").read_text()
    assert "taking over the lock of a process that is gone" in log3
    killed_group = records()[killed_run].group_id
    assert f"kdsweep: group {killed_group} restored by Ray Tune from its checkpoint: " in log3, log3[-3000:]

    recs = records()
    assert {r.status for r in recs.values()} == {"completed"}
    assert {k: store.read_bytes(f"runs/{k}/progress.json") for k in finished} == frozen, "finished students re-ran"
    for run_id, epoch in checkpointed.items():
        if epoch == space.runs[0].recipe.epochs:  # killed between its final checkpoint and its progress record:
            assert recs[run_id].resumed_from == [], run_id  # the records caught up, nothing trained again
            continue
        assert recs[run_id].resumed_from[0] == epoch, f"{run_id} did not resume from its epoch-{epoch} checkpoint"
    retried = {k: epoch for k, (status, epoch) in at_kill.items() if status != "completed" and epoch}
    assert killed_run in group and retried, f"the worker died after its students finished: {at_kill}"
    for run_id, epoch in retried.items():
        assert recs[run_id].resumed_from[-1] == epoch, f"{run_id} was not retried from its epoch-{epoch} checkpoint"
    assert stored_histories(root, ids) == reference_histories(space, tmp_path)
    trials = pd.read_parquet(root / "trials.parquet")
    assert len(trials) == 6 and set(trials.status) == {"completed"}
    # The final table is the uninterrupted run's, but for where and how long each student trained.
    uninterrupted = trials_frame(space, read_records(Store(str(tmp_path / "reference")), ids), live=False)
    same = [c for c in uninterrupted.columns if c not in ("wall_s", "group_id")]
    pd.testing.assert_frame_equal(trials[same], uninterrupted[same])


def run_cli(*args, cwd=None):
    code = ("import sys; from kdsweep.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(rc)")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "CUDA_VISIBLE_DEVICES": ""}  # as here
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env=env)


def test_gpu_requested_on_a_machine_without_one_is_refused_before_ray_starts(tmp_path):
    teacher = save_teacher(tmp_path / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher).replace("gpu: 0", "gpu: 0.5"))
    out = run_cli("run", str(path))
    assert out.returncode == 2
    assert "resources.gpu is 0.5 but this machine has no usable CUDA GPU" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout.strip() == "NO_RAY"


def test_a_second_run_on_the_same_experiment_is_refused(tmp_path):
    """A real holder: another process that took the experiment's lock and is still alive."""
    teacher = save_teacher(tmp_path / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher))
    root = tmp_path / "results" / "tiny"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = run_cli("run", str(path))
        assert out.returncode == 2
        assert f"experiment {root} is in use by another `kdsweep run` (pid {holder.pid}" in out.stderr
        assert out.stdout.strip() == "NO_RAY" and (root / LOCK_NAME).exists()
        assert is_held(Store(str(root)))
        assert ExperimentLock(Store(str(root))).holder()["pid"] == holder.pid  # the refused run left it alone
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: the next run takes it over, says so, and releases it at the end.
    assert not is_held(Store(str(root)))
    with ExperimentLock(Store(str(root))) as lock:
        assert lock.holder()["pid"] == os.getpid()
    assert not (root / LOCK_NAME).exists()


HOLD_LOCK = """
import sys, time
from kdsweep.storage import Store
from kdsweep.sweep.lock import ExperimentLock
ExperimentLock(Store(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_the_eta_is_the_time_left_at_the_sweeps_rate_so_far():
    from kdsweep.engine import RunRecord
    from kdsweep.sweep.progress import Summary, epochs_since, eta_seconds

    def record(*finished_at):
        return RunRecord(run_id="r", group_id="g", epochs=4, history=[{"finished_at": t} for t in finished_at])

    records = {"a": record(10.0, 20.0, 30.0), "b": record(5.0), "c": None}
    assert epochs_since(records, 20.0) == 2 and epochs_since(records, 0.0) == 4
    summary = Summary(total=3, counts={"running": 2, "pending": 1}, epochs_done=4, epochs_total=12)
    assert eta_seconds(summary, elapsed_s=40.0, epochs_gained=2) == 160.0  # 8 epochs left at 20 s each
    assert eta_seconds(summary, elapsed_s=40.0, epochs_gained=0) is None
    assert summary.line(40.0, 160.0).endswith("4/12 student-epochs, elapsed 40s, ETA 2m40s")


@pytest.mark.slow
def test_ctrl_c_keeps_the_work_and_the_same_command_resumes_it(tmp_path):
    """SIGINT (Ctrl-C) to the driver: Tune stops the trials, the tables are exported, the lock is released, the
    exit code is 130 with a resume hint, no process of the run is left; the same command then finishes the rest."""
    teacher = save_teacher(tmp_path / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher, epochs=6, seeds=(0,)))
    space = load_space(path)
    root = tmp_path / "results" / "tiny"
    store = Store(str(root))
    ids = [r.run_id for r in space.runs]
    driver = start(["run", str(path), "--no-report"], tmp_path / "interrupted.log")
    try:
        wait_for(lambda: all((r := rec) and r.checkpoint and r.status == "running"
                             for rec in read_records(store, ids).values()), 240, "every student checkpointed")
        os.kill(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=120) == 130
        wait_for(lambda: not session_pids(driver.pid), 30, "the interrupted run's processes to end")
    finally:
        kill_session(driver.pid)
    log = (tmp_path / "interrupted.log").read_text()
    assert "kdsweep: interrupted; finished work is kept - run the same command again to resume." in log
    assert "Traceback" not in log and "Tuner.restore" not in log, log  # kdsweep's resume hint, not Tune's
    assert not (root / LOCK_NAME).exists()
    trials = pd.read_parquet(root / "trials.parquet")
    assert set(trials.status) == {"pending"} and (trials.epochs_done > 0).all()  # resumable, with their epochs
    stopped_at = {k: resume_epoch(store, k) for k in ids}

    again = run_cli("run", str(path), "--no-report")
    assert again.returncode == 0, again.stderr[-3000:]
    records = read_records(store, ids)
    assert {r.status for r in records.values()} == {"completed"}
    assert {k: r.resumed_from[0] for k, r in records.items()} == stopped_at


@pytest.mark.slow
def test_a_driver_killed_while_exporting_the_tables_loses_nothing(tmp_path):
    """SIGKILL lands inside the final export of trials.parquet: the previous export stays readable, the records are
    intact, and the same command then ends with the complete table and no debris."""
    teacher = save_teacher(tmp_path / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher, seeds=(0,)))
    space = load_space(path)
    root = tmp_path / "results" / "tiny"
    killed_in, attempts = None, 0
    while killed_in is None and attempts < KILL_ATTEMPTS:
        # The first export follows the first epoch, the next is the final one (the sweep takes a few seconds);
        # should the kill come too late for that write, the same command again does nothing but the final export.
        log = tmp_path / f"driver-{attempts}.log"
        driver = start(["run", str(path), "--no-report"], log)
        try:
            wait_for(lambda: root.is_dir(), 60, "the experiment folder")
            killed_in = stop_inside_a_write(root, ".trials.parquet.*.tmp", driver.pid, 180, skip=int(attempts == 0))
            driver.wait(timeout=60)
        finally:
            kill_session(driver.pid)
        attempts += 1
        if killed_in is None:
            assert driver.returncode == 0, f"the driver failed before a kill could land:\n{log.read_text()[-3000:]}"
    assert killed_in, f"no SIGKILL landed inside a write of trials.parquet in {attempts} runs of the driver"
    assert (root / killed_in).exists(), f"the temporary file {killed_in} of the write the kill cut short is gone"
    before = pd.read_parquet(root / "trials.parquet")  # the previous export, whole
    assert len(before) == len(space.runs)
    ids = [r.run_id for r in space.runs]
    at_kill = read_records(Store(str(root)), ids)  # what trained is on record (all of it, unless the machine was
    finished = {k for k, r in at_kill.items() if r.status == "completed"}  # so slow that a periodic export came 2nd)
    frozen = progress_bytes(root, space)

    again = run_cli("run", str(path), "--no-report")
    assert again.returncode == 0, again.stderr[-3000:]
    records = read_records(Store(str(root)), ids)
    after = progress_bytes(root, space)
    assert {k: after[k] for k in finished} == {k: frozen[k] for k in finished}, "finished students re-ran"
    trials = pd.read_parquet(root / "trials.parquet")
    pd.testing.assert_frame_equal(trials, trials_frame(space, records, live=False))
    assert set(trials.status) == {"completed"} and not list(root.glob(".*.tmp"))


def test_rays_sigterm_exit_in_a_gc_callback_is_not_printed_but_other_unraisables_are(capsys):
    """What a trial's worker prints when Tune stops it: not "Exception ignored ... SystemExit: 1" from Ray's SIGTERM
    handler, but any other exception Python could not raise (tune._unraisable_but_ray_sigterm)."""
    from kdsweep.tune import _unraisable_but_ray_sigterm

    class RaisesWhenCollected:
        def __init__(self, err):
            self.err = err

        def __del__(self):
            raise self.err

    previous, sys.unraisablehook = sys.unraisablehook, _unraisable_but_ray_sigterm
    try:
        capsys.readouterr()
        RaisesWhenCollected(SystemExit(1))  # collected at once: Python hands the exception to the hook
        assert capsys.readouterr().err == ""
        RaisesWhenCollected(ValueError("a real problem"))
        assert "ValueError: a real problem" in capsys.readouterr().err
    finally:
        sys.unraisablehook = previous
