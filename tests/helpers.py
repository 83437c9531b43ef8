"""Small builders shared by the tests: tiny specs, a teacher checkpoint, tiny search spaces, and the few test doubles
(a crash on the first epoch, a pickle that runs code) that several test files need."""

from __future__ import annotations

from pathlib import Path

import torch

from kdsweep.data import DataSpec, parse_dataset
from kdsweep.engine import GroupSpec, Recipe, RunSpec, TeacherSpec
from kdsweep.methods import MethodSpec, parse_method
from kdsweep.models import create_model

# 64 training images at batch 32: two steps an epoch. What most tests check (resume, identity, files, messages)
# needs no more, and training is most of a sweep test's time.
TINY_DATA = parse_dataset({"name": "synthetic", "num_classes": 10, "train_size": 64, "test_size": 32, "seed": 0})


def method_spec(**knobs) -> MethodSpec:
    """A method from knobs as a search space would give them; `kind` defaults to simkd."""
    return parse_method(knobs)


def save_teacher(path: Path, arch: str = "resnet8", num_classes: int = 10, seed: int = 0) -> str:
    """A RepDistiller-style teacher checkpoint ({"model": state_dict}) of a freshly initialised model."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "epoch": 0}, path)
    return str(path)


def run_spec(run_id: str, lr: float = 0.05, seed: int = 0, epochs: int = 2, arch: str = "resnet8",
             checkpoint_every: int = 1, batch_size: int = 32, **knobs) -> RunSpec:
    recipe = Recipe(epochs=epochs, batch_size=batch_size, checkpoint_every=checkpoint_every)
    return RunSpec(run_id, arch, method_spec(**knobs), lr, seed, recipe,
                   labels={"variant": run_id, "title": run_id, "cell_id": run_id})


def group_spec(runs, storage: Path, teacher: str | None, seed: int = 0, data: DataSpec = TINY_DATA) -> GroupSpec:
    return GroupSpec(group_id="g", seed=seed, data=data,
                     teacher=TeacherSpec("resnet8", teacher) if teacher else None,
                     runs=tuple(runs), storage=str(storage), device="cpu", threads=1)


TINY_VARIANTS = """
  simkd: {title: SimKD, method: {taps: last}}
  labels: {title: Using ground truth labels, method: {gate: teacher_correct}}"""


def tiny_space(storage: Path, *, teacher: str | None = None, epochs: int = 2, seeds=(0, 1), lrs=(0.05,),
               max_students: int = 4, extra: str = "", variants: str | None = None, axes: str | None = None,
               experiment: str = "tiny", train_size: int = 64, test_size: int = 32, max_failures: int = 1) -> str:
    """A small but complete search space (YAML text). By default SimKD and gated SimKD, L2 and KL, against a
    configured baseline; `variants` and `axes` (YAML flow text) replace those, and the baseline with them."""
    teacher_yaml = (f"{{arch: resnet8, checkpoint: {teacher}}}" if teacher
                    else "{arch: resnet8, train: {epochs: 1, lr: 0.05, checkpoint_every: 1}}")
    baseline = "baseline: {label: configured, accuracy: 30.0, variant: simkd}" if variants is None else ""
    return f"""
experiment: {experiment}
teacher: {teacher_yaml}
student: {{arch: resnet8}}
dataset: {{name: synthetic, num_classes: 10, train_size: {train_size}, test_size: {test_size}, seed: 0}}
recipe: {{epochs: {epochs}, batch_size: 32, checkpoint_every: 1}}
variants: {TINY_VARIANTS if variants is None else variants}
axes: {axes or f"{{loss: [l2, kl], lr: {list(lrs)}, seed: {list(seeds)}}}"}
{baseline}
group: {{max_students: {max_students}}}
resources: {{cpu: 1, gpu: 0}}
storage: {storage}
execution: {{device: cpu, max_failures: {max_failures}}}
{extra}
"""


def synthetic(**knobs) -> DataSpec:
    """A synthetic DataSpec with these knobs."""
    return parse_dataset({"name": "synthetic", **knobs})


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) covering the full 0..255 range, with distinct borders so that crop offsets matter."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def write_space(folder: Path, text: str, name: str = "space.yaml") -> Path:
    """`text` as the search-space file `folder/name`."""
    path = folder / name
    path.write_text(text)
    return path


def history_key(history: list[dict]) -> list[tuple]:
    """What two runs that trained identically share, per epoch: (epoch, test accuracy, mean train loss)."""
    return [(e["epoch"], e["test_acc"], e["train_loss"]) for e in history]


class Crash(Exception):
    """Raised by `crash_after_first_epoch`: an interruption at a known point, told apart from real errors."""


def crash_after_first_epoch(report) -> None:
    """An `on_epoch` callback for run_group that interrupts the group after its first epoch."""
    raise Crash


class RunsCode:
    """Pickles to a call that writes `marker`: a checkpoint holding it must be refused, never unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`kdsweep ARGS` in this process, through the real entry point: (exit code, stdout, stderr)."""
    from kdsweep.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err
