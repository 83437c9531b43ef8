"""Experiment folders damaged every way: `status`, `report` and `run` answer with exit 0 or 2 and a message naming
the file, never a traceback, and after `kdsweep run` the results equal an undamaged experiment's.

Two experiments of one space (4 students, 2 epochs, a given teacher): one finished by `kdsweep run`, one
interrupted after its first epoch, as a killed driver leaves it (the driver's own set-up writes, then the group
stopped after epoch 1). Each damage - truncation, zero bytes, random bytes, wrong-shape JSON - is applied at once to
every file kdsweep reads there (the manifest, identity.json, the exported tables, the teacher record, and per run the
record, the newest checkpoint, a checksum file, spec.json and final.pt; one run each, so that the others' files
survive), and separately to kdsweep's copy of the space, which decides how the folder is read at all.
"""

import contextlib
import io
import random
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

from kdsweep.cli import main
from kdsweep.engine import run_group
from kdsweep.space import load_space
from kdsweep.storage import Store
from kdsweep.sweep import results
from kdsweep.sweep.experiment import record_identity
from kdsweep.sweep.plan import plan_groups
from helpers import Crash, crash_after_first_epoch, save_teacher, tiny_space, write_space

pytestmark = pytest.mark.slow

DAMAGES = {
    "truncated": lambda data: data[: len(data) // 2],
    "zero bytes": lambda data: b"",
    "random bytes": lambda data: random.Random(len(data)).randbytes(max(len(data), 64)),
    "wrong-shape JSON": lambda data: b"[]",
}
COLUMNS = ["student_id", "status", "epochs_done", "best_acc", "best_epoch", "last_acc"]


def kdsweep(*args: str) -> tuple[int, str, str]:
    """`kdsweep ARGS` in this process: (exit code, stdout + stderr, the warnings it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(list(args))  # a traceback would escape here and fail the test
    return code, out.getvalue(), "\n".join(str(w.message) for w in caught)


@pytest.fixture(scope="module")
def experiments(ray_session, tmp_path_factory):
    """{"finished": folder, "interrupted": folder}, and the finished one's trials table."""
    base = tmp_path_factory.mktemp("experiments")
    teacher = save_teacher(base / "teacher.pth")
    folders = {}
    for state in ("finished", "interrupted"):
        path = write_space(base, tiny_space(base / state, teacher=teacher, seeds=(0,)), f"{state}.yaml")
        space = load_space(path)
        if state == "finished":
            assert kdsweep("run", str(path), "--no-report")[0] == 0
        else:  # what the driver writes before training, then the group stops after its first epoch
            store = Store(space.root)
            record_identity(space, store, space.runs, {})
            results.write_space_and_manifest(space, store, device="cpu", ray_version=None)
            (group,) = plan_groups(space, list(space.runs), store, max_students=4)
            with pytest.raises(Crash):
                run_group(group, on_epoch=crash_after_first_epoch)
            results.export(space, store, live=False)
        folders[state] = Path(space.root)
    return folders, pd.read_parquet(folders["finished"] / "trials.parquet")[COLUMNS]


def copy_of(folder: Path, where: Path) -> tuple[Path, Path]:
    """The experiment copied to `where/<name>` and a space file whose storage is `where`."""
    shutil.copytree(folder, where / folder.name)
    space = (folder.parent.parent / f"{folder.parent.name}.yaml").read_text()
    return where / folder.name, write_space(where, space.replace(f"storage: {folder.parent}\n", f"storage: {where}\n"))


def damage(files: list[Path], how) -> None:
    for path in files:
        path.write_bytes(how(path.read_bytes()))


@pytest.mark.parametrize("state", ["finished", "interrupted"])
@pytest.mark.parametrize("how", list(DAMAGES))
def test_every_file_kdsweep_reads_damaged_at_once(experiments, tmp_path, state, how):
    folders, expected = experiments
    root, space = copy_of(folders[state], tmp_path)
    runs = sorted(p for p in (root / "runs").iterdir())
    newest = [sorted(r.glob("checkpoints/epoch-*.pt"))[-1] for r in runs]
    files = [root / "manifest.json", root / "identity.json", root / "trials.parquet", root / "epochs.parquet",
             *root.glob("teachers/*.json"),
             runs[0] / "progress.json",  # rebuilt from its newest checkpoint
             newest[1],  # falls back to the previous checkpoint, or trains again
             newest[2].with_name(newest[2].name + ".sha256"),  # makes its checkpoint damaged
             runs[3] / "spec.json", *runs[3].glob("final.pt*")]
    damage(files, DAMAGES[how])

    code, out, said = kdsweep("status", str(root))
    assert code == 0 and "Traceback" not in out, out + said
    assert f"{runs[0]}/progress.json" in said and f"{root}/identity.json is damaged" in said, said
    code, out, said = kdsweep("report", str(root))
    assert code == 0 and "Traceback" not in out, out + said
    assert f"manifest {root}/manifest.json" in said, said
    code, out, said = kdsweep("run", str(space), "--no-report")
    assert code == 0 and "Traceback" not in out, out + said
    pd.testing.assert_frame_equal(pd.read_parquet(root / "trials.parquet")[COLUMNS], expected)
    code, out, said = kdsweep("status", str(root))
    assert code == 0 and "4/4 students done" in out and "damaged" not in said, out + said  # repaired on disk


@pytest.mark.parametrize("state", ["finished", "interrupted"])
@pytest.mark.parametrize("how", list(DAMAGES))
def test_a_damaged_copy_of_the_space_is_named_and_written_again(experiments, tmp_path, state, how):
    folders, expected = experiments
    root, space = copy_of(folders[state], tmp_path)
    damage([root / "space.yaml"], DAMAGES[how])
    named = f"{root}/space.yaml, kdsweep's copy of the space this experiment last ran, cannot be used: it "

    code, out, said = kdsweep("status", str(root))
    assert code == 2 and named in out and "Give your space file instead" in out and "Traceback" not in out, out
    code, out, said = kdsweep("status", str(space))
    assert code == 0 and f"{root}/space.yaml cannot be used (it " in said, out + said
    code, out, said = kdsweep("report", str(root))
    assert code == 0 and "reporting the tables as the last sweep exported them" in said, out + said
    code, out, said = kdsweep("run", str(space), "--no-report")
    assert code == 0 and f"{root}/space.yaml cannot be used (it " in said, out + said
    pd.testing.assert_frame_equal(pd.read_parquet(root / "trials.parquet")[COLUMNS], expected)
    assert load_space(root / "space.yaml", text=(root / "space.yaml").read_text()).root == str(root)
