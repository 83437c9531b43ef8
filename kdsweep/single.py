"""`kdsweep train`: one configuration (K >= 1 learning rates as one student group) without Ray or pydantic."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import yaml

from kdsweep import typed_config
from kdsweep.data import DataSpec, dataset_class, dataset_problems, parse_dataset
from kdsweep.engine import EpochReport, GroupSpec, Recipe, RunSpec, TeacherSpec, run_group
from kdsweep.engine.recipe import section_problems
from kdsweep.errors import UserError
from kdsweep.ids import digest, teacher_identity
from kdsweep.methods import load_plugins, method_problems, parse_method
from kdsweep.models import feature_info
from kdsweep.storage import absolute_location
from kdsweep.typed_config import knob_names
from kdsweep.yamlsafe import excerpt, parse_value, yaml_problem


@dataclass
class TrainRequest:
    student: str
    teacher: str | None
    teacher_checkpoint: str | None
    data: DataSpec
    recipe: Recipe
    lrs: list[float]
    seed: int
    method: dict = field(default_factory=dict)  # knob -> value, e.g. {"taps": "multi", "loss": "kl"}
    out: str = "results/train"
    device: str = "auto"
    threads: int | None = None
    execution: dict = field(default_factory=dict)  # teacher_cache and the speed switches, as GroupSpec fields
    plugins: tuple[str, ...] = ()  # files registering methods of the user's own (absolute paths)


# `kdsweep train --dataset synthetic` is a quick offline check, so its sizes are small unless --data sets them.
QUICK_SYNTHETIC = {"num_classes": 10, "train_size": 2000, "test_size": 500}


def parse_knobs(items: list[str], flag: str, example: str) -> dict:
    """`--method kind=dkd --method beta=4` -> {"kind": "dkd", "beta": 4} (values parsed as YAML scalars)."""
    knobs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item}: expected KNOB=VALUE, e.g. {flag} {example} (`kdsweep methods` and "
                            f"`kdsweep datasets` list every method and dataset with its knobs).")
        try:
            knobs[key] = parse_value(text)
        except yaml.YAMLError as err:
            raise UserError(f"{flag} {key}: the value {excerpt(text)} is not valid YAML: {yaml_problem(err)}.") from None
    return knobs


def parse_recipe(values: dict) -> Recipe:
    """The recipe of `--epochs`, `--batch-size`, `--milestones` and `--checkpoint-every` (the space's `recipe`)."""
    problems = section_problems(Recipe, values, "recipe")
    if problems:
        flag = {f"recipe.{k}": f"--{k.replace('_', '-')}" for k in values}
        raise UserError("; ".join(f"{flag.get(p, p)}: {m}" for p, m in problems) + ".")
    return typed_config.build(Recipe, values)


def parse_data_options(name: str, knobs: dict, root: str, download: bool, plugins: tuple[str, ...]) -> DataSpec:
    """The dataset of `--dataset NAME --data KNOB=VALUE ...`; --data-root and --download fill the `root` and
    `download` knobs of datasets that have them."""
    load_plugins(plugins)
    try:
        names = knob_names(dataset_class(name).Config)
    except KeyError as err:
        raise UserError(f"--dataset: {err.args[0]}.") from None
    values = {**(QUICK_SYNTHETIC if name == "synthetic" else {}), **knobs}
    if "root" in names:
        values.setdefault("root", root)
    if download:
        if "download" not in names:
            raise UserError(f"--download: dataset {name} is not downloaded (it has no download knob).")
        values["download"] = True
    problems = dataset_problems({"name": name, **values}, "--data")
    if problems:
        raise UserError("; ".join(f"{p.replace('--data.', '--data ')}: {m}" for p, m in problems)
                        + ". `kdsweep datasets` lists every dataset and its knobs.")
    return parse_dataset({"name": name, **values})


def build_group(req: TrainRequest) -> GroupSpec:
    load_plugins(req.plugins)
    values = {"kind": "simkd" if req.teacher else "vanilla", **req.method}
    problems = method_problems(values, "--method")
    if problems:
        raise UserError("; ".join(f"{p.replace('--method.', '--method ')}: {m}" for p, m in problems)
                        + ". `kdsweep methods` lists every method and its knobs.")
    method = parse_method(values)
    kind = method.kind
    if method.method.needs_teacher and not (req.teacher and req.teacher_checkpoint):
        raise UserError(f"method '{kind}' needs --teacher ARCH and --teacher-checkpoint FILE.")
    size = req.data.geometry.image_size
    pair = method.method.config_problems(method.config, feature_info(req.student, size),
                                         feature_info(req.teacher, size) if req.teacher else None)
    if pair:
        raise UserError("; ".join(f"--method {k}: expected {m}" for k, m in pair) + ".")
    if any(lr <= 0 for lr in req.lrs):
        raise UserError(f"--lr must be > 0, got {req.lrs}.")
    teacher = None
    if method.method.needs_teacher:
        teacher = TeacherSpec(req.teacher, absolute_location(req.teacher_checkpoint))
    # The teacher by its tensors, not its path (ids.py): the same weights elsewhere resume the same runs.
    teacher_id = teacher and teacher_identity(teacher.arch, teacher.checkpoint, None)
    runs = []
    for lr in req.lrs:
        identity = {"student": req.student, "teacher": teacher_id, "method": method.as_record(),
                    "lr": lr, "seed": req.seed, "recipe": req.recipe.as_record(), "data": req.data.identity()}
        run_id = f"{req.student}-{kind}-lr{lr:g}-s{req.seed}-{digest(identity)}"
        runs.append(RunSpec(run_id, req.student, method, lr, req.seed, req.recipe,
                            labels={"variant": kind, "title": kind, "cell_id": run_id}))
    group_id = f"train-{digest([r.run_id for r in runs])}"
    return GroupSpec(group_id=group_id, seed=req.seed, data=req.data, teacher=teacher, runs=tuple(runs),
                     storage=absolute_location(req.out), device=req.device, threads=req.threads,
                     plugins=tuple(req.plugins), **req.execution)


def train(req: TrainRequest) -> list[dict]:
    group = build_group(req)
    started = time.time()
    print(f"kdsweep train: {len(group.runs)} student(s) of {req.student}"
          f"{' from ' + req.teacher if group.teacher else ''}, {req.recipe.epochs} epochs, seed {req.seed}; "
          f"results in {group.storage}/runs/", flush=True)

    def show(epoch: EpochReport) -> None:
        for s in epoch.students:
            lr = next(r.lr for r in group.runs if r.run_id == s["run_id"])
            extra = "".join(f"  {k.removeprefix('train_loss_')} {v:.4g}" for k, v in s["measured"].items()
                            if v is not None)
            print(f"epoch {epoch.epoch:>3}/{req.recipe.epochs}  lr {lr:g}  test {s['test_acc']:6.2f}%  "
                  f"best {s['best_acc']:6.2f}%  loss {s['train_loss']:.4g}{extra}  [{s['status']}]  "
                  f"{epoch.seconds:.1f}s", flush=True)

    records = run_group(group, on_epoch=show)
    for r in records:
        print(f"{r['run_id']}: {r['status']}, best {r['best_acc']:.2f}% (epoch {r['best_epoch']}), "
              f"last {r['last_acc']:.2f}%  -> {group.storage}/runs/{r['run_id']}/", file=sys.stdout)
    print(f"kdsweep train: done in {time.time() - started:.1f}s")
    return records
