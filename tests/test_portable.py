"""Experiments that survive being moved, changed and shared: ids free of locations, scope changes said before
anything trains, kdsweep 0.1 experiments resumed, files that honour the umask.

The sweeps run in-process on the suite's local Ray (`ray_session`), through `kdsweep.cli.main`, so that each test
checks what a user sees: the messages, the exit codes and the files.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from kdsweep.space import load_space
from kdsweep.ids import checkpoint_digest, state_dict_digest
from kdsweep.storage import Store
from kdsweep.sweep.plan import read_records
from helpers import cli, save_teacher, tiny_space, write_space

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-v01" / "experiment"


def run_records(root: Path) -> dict[str, bytes]:
    """Every run's progress.json, by folder: what a retrained run would rewrite."""
    return {p.parent.name: p.read_bytes() for p in sorted(root.glob("runs/*/progress.json"))}


# --- Identity ------------------------------------------------------------------------------------------------------

def test_a_teacher_is_identified_by_its_tensors_not_its_file(tmp_path):
    first = save_teacher(tmp_path / "a" / "t.pth")
    sd = torch.load(first, weights_only=True)["model"]
    torch.save(sd, tmp_path / "bare.pth")  # the same weights as a bare state_dict: other bytes, same teacher
    other = save_teacher(tmp_path / "other.pth", seed=1)
    assert checkpoint_digest(first) == checkpoint_digest(str(tmp_path / "bare.pth")) == state_dict_digest(sd)
    assert checkpoint_digest(other) != checkpoint_digest(first)
    changed = {k: v.clone() for k, v in sd.items()}
    changed["fc.bias"][0] += 1e-6
    assert state_dict_digest(changed) != state_dict_digest(sd)
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
    assert state_dict_digest(half) != state_dict_digest(sd)  # a dtype is part of the content

    spaces = [load_space(write_space(tmp_path, tiny_space(tmp_path / where, teacher=ckpt)))
              for where, ckpt in (("r1", first), ("r2", str(tmp_path / "bare.pth")))]
    assert [r.run_id for r in spaces[0].runs] == [r.run_id for r in spaces[1].runs]  # other storage, other path
    assert spaces[0].root != spaces[1].root


def test_a_moved_and_renamed_experiment_reports_the_same_and_trains_nothing(ray_session, tmp_path, capsys):
    path = write_space(tmp_path, tiny_space(tmp_path / "results", seeds=(0,)))
    rc, out, _ = cli(capsys, "run", str(path))
    assert rc == 0 and "4 runs, 0 already finished, 4 to train" in out
    original = tmp_path / "results" / "tiny"
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # nothing may still point at the old folder
    before = run_records(copy)
    reported = (copy / "results.md").read_text()

    rc, out, _ = cli(capsys, "status", str(copy))
    assert rc == 0 and "4/4 students done, 0 running, 0 pending" in out
    rc, out, _ = cli(capsys, "report", str(copy))
    assert rc == 0 and (copy / "results.md").read_text() == reported
    rc, out, _ = cli(capsys, "run", str(copy), "--no-report")
    assert rc == 0 and "4 runs, 4 already finished, 0 to train" in out, out
    assert run_records(copy) == before
    assert not original.exists()  # resumed where it lies, not where it was made
    trials = pd.read_parquet(copy / "trials.parquet")
    assert len(trials) == 4 and set(trials.status) == {"completed"} and trials.in_space.all()
    # Checkpoint locations in the records are relative to the experiment folder.
    assert all(not json.loads(b)["checkpoint"]["file"].startswith("/") for b in before.values())
    # Files are created with the process's umask (022 here: rw-r--r--), also the atomically renamed ones.
    for file in (copy / "results.md", copy / "trials.parquet", copy / "identity.json", *copy.glob("runs/*/*.json")):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


def test_a_moved_teacher_checkpoint_with_the_same_weights_retrains_nothing(ray_session, tmp_path, capsys):
    teacher = save_teacher(tmp_path / "teachers" / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher, seeds=(0,)))
    assert cli(capsys, "run", str(path), "--no-report")[0] == 0
    root = tmp_path / "results" / "tiny"
    before = run_records(root)
    moved = tmp_path / "mnt" / "shared" / "teacher.pth"
    moved.parent.mkdir(parents=True)
    os.rename(teacher, moved)
    # Where the teacher's file is gone, the experiment knows its teacher by the identity it recorded.
    rc, out, _ = cli(capsys, "status", str(root))
    assert rc == 0 and "4/4 students done" in out, out
    rc, out, err = cli(capsys, "run", str(path), "--no-report", "--set", f"teacher.checkpoint={moved}")
    assert rc == 0 and "4 runs, 4 already finished, 0 to train" in out, out + err
    assert run_records(root) == before

    # Other weights at the teacher's path are another teacher: refused, every problem named, nothing touched.
    save_teacher(Path(teacher), seed=3)
    rc, out, err = cli(capsys, "run", str(path), "--no-report")
    assert rc == 2 and "teacher.content_sha256: sha256 " in err and "4 finished runs" in err, err
    assert "--as-new-experiment NAME" in err and "--replace" in err and "Traceback" not in err
    assert run_records(root) == before


# --- kdsweep 0.1 experiments ---------------------------------------------------------------------------------------

def test_an_experiment_from_kdsweep_0_1_resumes_without_retraining(ray_session, tmp_path, capsys):
    """The fixture (tests/fixtures/legacy-v01/README.md): seed 0 finished, seed 1 killed after epoch 1, made by
    0.1's code in another folder. Copied elsewhere, it resumes: seed 0 untouched, seed 1 from its checkpoints."""
    copy = tmp_path / "copied" / "legacy"
    shutil.copytree(FIXTURE, copy)
    before = run_records(copy)
    legacy_folders = sorted(p.name for p in (copy / "runs").iterdir() if not p.name.startswith("teacher-"))

    rc, out, _ = cli(capsys, "status", str(copy))
    assert rc == 0 and "2/4 students done, 0 running, 2 pending" in out, out
    rc, out, _ = cli(capsys, "run", str(copy), "--no-report")
    assert rc == 0 and "4 runs, 2 already finished, 2 to train" in out, out
    after = run_records(copy)
    seed0 = [k for k in before if "-s0-" in k]
    assert len(seed0) == 2 and {k: after[k] for k in seed0} == {k: before[k] for k in seed0}
    records = read_records(Store(str(copy)), legacy_folders)
    assert {k: (r.status, r.resumed_from) for k, r in records.items() if "-s1-" in k} == {
        k: ("completed", [1]) for k in legacy_folders if "-s1-" in k}
    trials = pd.read_parquet(copy / "trials.parquet")
    assert sorted(trials.student_id) == legacy_folders and set(trials.status) == {"completed"}
    identity = json.loads((copy / "identity.json").read_text())
    assert sorted(identity["legacy_ids"].values()) == legacy_folders
    assert identity["teacher"] == {"arch": "resnet8", "trained_run": "teacher-resnet8-2f3de9794b"}
    # From now on it is an experiment like any other: moved again, it still finds every run.
    again = tmp_path / "again"
    shutil.move(copy, again)
    rc, out, _ = cli(capsys, "run", str(again), "--no-report")
    assert rc == 0 and "4 runs, 4 already finished, 0 to train" in out, out


# --- Scope changes -------------------------------------------------------------------------------------------------

def test_scope_changes_are_said_before_anything_trains_and_lose_nothing(ray_session, tmp_path, capsys):
    teacher = save_teacher(tmp_path / "t.pth")  # (a trained one would be trained again by --as-new-experiment)
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher, seeds=(0, 1)))
    root = tmp_path / "results" / "tiny"
    assert cli(capsys, "run", str(path), "--no-report")[0] == 0

    rc, out, _ = cli(capsys, "run", str(path), "--no-report", "--set", "axes.seed=[0, 1, 2]")
    assert rc == 0, out
    assert ("  + 4 runs in 4 cells (seed 2; variant simkd, labels; loss l2, kl; lr 0.05): new in this space, "
            "they train now") in out
    assert "12 runs, 8 already finished, 4 to train" in out

    # Back to the plain space: seed 2 is outside it, kept and still reported, marked.
    finished = run_records(root)
    rc, out, _ = cli(capsys, "run", str(path))
    assert rc == 0 and "8 runs, 8 already finished, 0 to train" in out, out
    assert "  - 4 runs in 4 cells (seed 2; variant simkd, labels; loss l2, kl; lr 0.05): no longer in the space; " \
           "kept on disk and still reported" in out
    assert run_records(root) == finished
    trials = pd.read_parquet(root / "trials.parquet")
    assert len(trials) == 12 and sorted(trials[~trials.in_space].seed) == [2, 2, 2, 2]
    results = (root / "results.md").read_text()
    assert "> 4 runs in 4 cells (seed 2) lie outside the experiment's current space" in results
    assert results.count("| complete; 1 outside the current space |") == 4
    rc, out, _ = cli(capsys, "status", str(root))
    assert "outside the current space: 4 runs in 4 cells (seed 2;" in out and "4 finished" in out
    rc, out, _ = cli(capsys, "report", str(root), "--only-current")
    results = (root / "results.md").read_text()
    assert rc == 0 and "outside" not in results and results.count("| complete |") == 4
    assert len(list((root / "history").glob("space-*.yaml"))) == 2  # each earlier space.yaml is kept

    # A recipe change alters every run's identity: refused with what changed, nothing written.
    space_yaml = (root / "space.yaml").read_bytes()
    rc, out, err = cli(capsys, "run", str(path), "--set", "recipe.epochs=1")
    assert rc == 2 and "  - recipe.epochs: 2 -> 1\n" in err and "12 finished runs" in err, err
    assert "  - recipe.milestones: [1, 2, 2] -> [1, 1, 1]\n" in err
    assert (root / "space.yaml").read_bytes() == space_yaml and run_records(root) == finished

    # ... unless it goes into a new experiment beside this one,
    rc, out, _ = cli(capsys, "run", str(root), "--no-report", "--set", "recipe.epochs=1", "--set",
                         "axes.seed=[0]", "--as-new-experiment", "tiny-e1")
    assert rc == 0 and "4 runs, 0 already finished, 4 to train" in out, out
    assert (tmp_path / "results" / "tiny-e1" / "trials.parquet").exists() and run_records(root) == finished
    # ... or replaces it here: the earlier runs stay on disk, out of the tables.
    rc, out, _ = cli(capsys, "run", str(path), "--no-report", "--set", "recipe.epochs=1", "--set", "axes.seed=[0]",
                         "--replace")
    assert rc == 0 and "  ! recipe.epochs: 2 -> 1" in out and "4 to train" in out, out
    assert {k: v for k, v in run_records(root).items() if k in finished} == finished
    trials = pd.read_parquet(root / "trials.parquet")
    assert len(trials) == 4 and (trials.epochs == 1).all()
    rc, out, _ = cli(capsys, "status", str(root))
    assert "12 run folders of another configuration" in out, out


# --- Permissions ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        store = Store(str(tmp_path / "exp"))
        store.write_bytes("a/b.txt", b"x")
        store.write_json("c.json", {})
    finally:
        os.umask(old)
    for name in ("a/b.txt", "c.json"):
        assert stat.S_IMODE((tmp_path / "exp" / name).stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "exp" / "a").stat().st_mode) == 0o777 & ~umask


def test_a_sweep_under_umask_027_leaves_no_file_others_can_read_and_none_the_group_cannot(tmp_path):
    """A real `kdsweep run` (own embedded Ray, workers included) under umask 027, as on a group-shared NFS."""
    teacher = save_teacher(tmp_path / "t.pth")
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher, seeds=(0,)))
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "kdsweep", "run", str(path)], capture_output=True, text=True,
                         timeout=300, env=env, preexec_fn=lambda: os.umask(0o027))
    assert out.returncode == 0, out.stderr[-3000:]
    root = tmp_path / "results" / "tiny"
    ours = [p for p in root.rglob("*") if p.is_file() and "tune" not in p.relative_to(root).parts]
    assert {p.relative_to(root).as_posix() for p in ours} >= {"results.md", "trials.parquet", "manifest.json",
                                                             "space.yaml", "identity.json", "plots/curves.png"}
    assert any(p.suffix == ".pt" for p in ours)  # checkpoints and final weights, written by the Ray workers
    wrong = {p.relative_to(root).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in ours
             if stat.S_IMODE(p.stat().st_mode) != 0o640}
    assert wrong == {}


# --- Damaged records -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_damaged_run_records_are_rebuilt_from_their_checkpoints(ray_session, tmp_path, capsys):
    """progress.json truncated, emptied, a JSON list, or with fields of the wrong type, and the manifest a JSON
    list: `status` and `report` answer (each record as the run's newest good checkpoint has it), `run` repairs the
    files without training them again; a damaged record with no checkpoint left trains again. The tables end as
    they were."""
    path = write_space(tmp_path, tiny_space(tmp_path / "results", teacher=save_teacher(tmp_path / "t.pth"), seeds=(0,)))
    assert cli(capsys, "run", str(path), "--no-report")[0] == 0
    root = tmp_path / "results" / "tiny"
    trials = pd.read_parquet(root / "trials.parquet")
    folders = sorted(run_records(root))
    damages = [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"[]",
               lambda b: json.dumps({**json.loads(b), "status": "bogus", "epochs_done": "x"}).encode()]
    for folder, damage in zip(folders, damages):
        record = root / "runs" / folder / "progress.json"
        record.write_bytes(damage(record.read_bytes()))
    (root / "manifest.json").write_bytes(b"[]")
    lost = root / "runs" / folders[0] / "checkpoints"
    shutil.rmtree(lost)  # this run's record cannot be rebuilt: it trains again

    with warnings.catch_warnings(record=True) as caught:  # what the CLI prints as "kdsweep: warning: ..."
        warnings.simplefilter("always")
        rc, out, _ = cli(capsys, "status", str(root))
    err = "\n".join(str(w.message) for w in caught)
    assert rc == 0 and "3/4 students done, 0 running, 1 pending" in out, out + err
    assert f"run record {root}/runs/{folders[0]}/progress.json is not JSON (" in err
    assert "the run has no good checkpoint, so it trains again from the start" in err
    assert f"run record {root}/runs/{folders[1]}/progress.json is not JSON (" in err
    assert f"run record {root}/runs/{folders[2]}/progress.json holds a JSON list, not an object" in err
    assert f"run record {root}/runs/{folders[3]}/progress.json has `epochs_done`: \"x\", expected int" in err
    assert err.count("; rebuilt from its checkpoint after epoch 2") == 3 and "Traceback" not in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = cli(capsys, "report", str(root))
    assert rc == 0 and "Traceback" not in err, err
    assert f"manifest {root}/manifest.json holds a JSON list without a `teacher` object; it is rebuilt" in "\n".join(
        str(w.message) for w in caught)

    rc, out, err = cli(capsys, "run", str(path), "--no-report")
    assert rc == 0 and "4 runs, 3 already finished, 1 to train" in out, out + err
    assert all(json.loads(b)["status"] == "completed" for b in run_records(root).values())  # repaired on disk
    assert json.loads((root / "manifest.json").read_text())["experiment"] == "tiny"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli(capsys, "status", str(root))[0] == 0
    assert not [w for w in caught if "run record" in str(w.message)]  # reported once, then repaired
    after = pd.read_parquet(root / "trials.parquet")
    columns = ["student_id", "status", "epochs_done", "best_acc", "best_epoch", "last_acc"]
    pd.testing.assert_frame_equal(after[columns], trials[columns])  # retrained deterministically, the others kept


@pytest.mark.slow
def test_a_damaged_teacher_final_is_written_again_and_nothing_else_trains(ray_session, tmp_path, capsys):
    """The final.pt of the teacher trained in the experiment (which every group reads) is checksummed. Bit-flipped,
    it is written again from the teacher's final checkpoint; with its checkpoints gone too, the teacher trains
    again. Both times the weights equal the original ones (CPU training is deterministic) and no student trains."""
    path = write_space(tmp_path, tiny_space(tmp_path / "results", seeds=(0,)))
    assert cli(capsys, "run", str(path), "--no-report")[0] == 0
    root = tmp_path / "results" / "tiny"
    (teacher,) = [p for p in (root / "runs").iterdir() if p.name.startswith("teacher-")]
    final = teacher / "final.pt"
    assert (teacher / "final.pt.sha256").read_text() == f"{hashlib.sha256(final.read_bytes()).hexdigest()}  final.pt\n"
    weights = torch.load(final, weights_only=True)["model"]
    students = {k: v for k, v in run_records(root).items() if not k.startswith("teacher-")}

    for damage in ("flip", "flip and no checkpoints"):
        data = bytearray(final.read_bytes())
        data[len(data) // 2] ^= 0xFF  # inside a tensor: torch.load would read it without complaint
        final.write_bytes(bytes(data))
        if damage == "flip and no checkpoints":
            shutil.rmtree(teacher / "checkpoints")
        rc, out, err = cli(capsys, "run", str(path), "--no-report")
        assert rc == 0, err[-2000:]
        assert (f"kdsweep: the teacher's {final} is corrupted or truncated (checksum mismatch): writing it again from "
                f"its checkpoints") in out, out
        assert "4 runs, 4 already finished, 0 to train" in out, out
        rebuilt = torch.load(final, weights_only=True)["model"]
        assert rebuilt.keys() == weights.keys() and all(torch.equal(rebuilt[k], weights[k]) for k in weights), damage
        assert (teacher / "final.pt.sha256").read_text().split()[0] == hashlib.sha256(final.read_bytes()).hexdigest()
        assert {k: v for k, v in run_records(root).items() if k in students} == students, "a student trained again"
    assert json.loads((teacher / "progress.json").read_text())["resumed_from"] == [], "trained again from the start"
