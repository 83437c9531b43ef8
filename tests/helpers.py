"""Small builders shared by the tests: tiny specs, a teacher checkpoint, tiny search spaces."""

from __future__ import annotations

from pathlib import Path

import torch

from kdsweep.data import DataSpec, parse_dataset
from kdsweep.engine import GroupSpec, Recipe, RunSpec, TeacherSpec
from kdsweep.methods import MethodSpec, parse_method
from kdsweep.models import create_model

TINY_DATA = parse_dataset({"name": "synthetic", "num_classes": 10, "train_size": 192, "test_size": 64, "seed": 0})


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


def tiny_space(storage: Path, *, teacher: str | None = None, epochs: int = 2, seeds=(0, 1), lrs=(0.05,),
               max_students: int = 4, extra: str = "") -> str:
    """A small but complete search space (YAML text): SimKD and gated SimKD, L2 and KL."""
    teacher_yaml = (f"{{arch: resnet8, checkpoint: {teacher}}}" if teacher
                    else "{arch: resnet8, train: {epochs: 1, lr: 0.05, checkpoint_every: 1}}")
    return f"""
experiment: tiny
teacher: {teacher_yaml}
student: {{arch: resnet8}}
dataset: {{name: synthetic, num_classes: 10, train_size: 192, test_size: 64, seed: 0}}
recipe: {{epochs: {epochs}, batch_size: 32, checkpoint_every: 1}}
variants:
  simkd: {{title: SimKD, method: {{taps: last}}}}
  labels: {{title: Using ground truth labels, method: {{gate: teacher_correct}}}}
axes: {{loss: [l2, kl], lr: {list(lrs)}, seed: {list(seeds)}}}
baseline: {{label: configured, accuracy: 30.0, variant: simkd}}
group: {{max_students: {max_students}}}
resources: {{cpu: 1, gpu: 0}}
storage: {storage}
execution: {{device: cpu, max_failures: 1}}
{extra}
"""


def synthetic(**knobs) -> DataSpec:
    """A synthetic DataSpec with these knobs."""
    return parse_dataset({"name": "synthetic", **knobs})


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) covering the full 0..255 range, with distinct borders so that crop offsets matter."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
