"""Expanding a validated search space into student runs with stable ids.

Order: variants as written, then the loss axis, lr, any knob axes, and seed last. A run's id is readable
(`multi-l2-lr0.01-s1-<hash>`) and the hash covers everything that determines its result (architectures, the
teacher's identity, dataset, recipe, resolved method, lr, seed) and no location (`kdsweep/ids.py`), so editing a
space keeps the ids of unchanged runs, and a moved experiment keeps all of them: a resumed or extended sweep
recognises finished work, and a changed recipe never reuses stale results.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from kdsweep import typed_config
from kdsweep.data import DataSpec, parse_dataset
from kdsweep.engine.recipe import Recipe, TeacherRecipe
from kdsweep.engine.specs import RunSpec, TeacherSpec
from kdsweep.ids import digest
from kdsweep.methods import Method, MethodSpec, parse_method
from kdsweep.methods.vanilla import VanillaConfig
from kdsweep.models import feature_info
from kdsweep.space.schema import SpaceFile
from kdsweep.storage import absolute_location


@dataclass(frozen=True)
class TeacherPlan:
    spec: TeacherSpec  # what students load
    training_run: RunSpec | None  # set when kdsweep trains the teacher first (its final.pt is spec.checkpoint)


@dataclass(frozen=True)
class Space:
    """A validated, expanded search space: everything `kdsweep run` needs, with absolute locations."""

    file: SpaceFile
    source: str  # the file it came from (for messages)
    raw: dict  # the document as run, overrides applied (saved as space.yaml)
    root: str  # experiment folder: <storage>/<experiment>, absolute path or URI
    data: DataSpec
    teacher: TeacherPlan
    teacher_identity: dict  # the teacher's part of every run id (kdsweep/ids.py)
    runs: tuple[RunSpec, ...]
    # Once opened against its experiment folder (sweep/experiment.py): runs on disk that the space does not name
    # but whose configuration it shares (a seed or an lr since dropped from the axes). Reported, never trained.
    outside: tuple[RunSpec, ...] = ()
    plugins: tuple[str, ...] = ()  # absolute paths of the plug-in files every trial imports first

    @property
    def cells(self) -> list[str]:
        return list(dict.fromkeys(r.labels["cell_id"] for r in self.runs))


def data_spec(space: SpaceFile, base: Path) -> DataSpec:
    return parse_dataset(space.dataset, base)


def teacher_plan(space: SpaceFile, root: str, data: DataSpec, base: Path) -> TeacherPlan:
    t = space.teacher
    if t.checkpoint is not None:
        spec = TeacherSpec(t.arch, absolute_location(t.checkpoint, base), t.expected_accuracy)
        return TeacherPlan(spec, None)
    train = typed_config.build(TeacherRecipe, t.train)
    recipe = train.recipe()
    method = MethodSpec("vanilla", VanillaConfig())
    identity = {"arch": t.arch, "data": data.identity(), "recipe": recipe.as_record(), "lr": train.lr, "seed": train.seed}
    run_id = f"teacher-{t.arch}-{digest(identity)}"
    run = RunSpec(run_id, t.arch, method, train.lr, train.seed, recipe,
                  labels={"role": "teacher", "variant": "teacher", "title": f"teacher {t.arch}"})
    spec = TeacherSpec(t.arch, f"{root}/runs/{run_id}/final.pt", t.expected_accuracy)
    return TeacherPlan(spec, run)


def experiment_context(space: SpaceFile, data: DataSpec, teacher_identity: dict) -> dict:
    """What every run of the experiment shares and its id hashes: a change to any of it changes every run."""
    return {"student": space.student.arch, "teacher": teacher_identity, "data": data.identity(),
            "recipe": student_recipe(space).as_record()}


def student_recipe(space: SpaceFile) -> Recipe:
    return typed_config.build(Recipe, space.recipe)


def cell_methods(space: SpaceFile):
    """(variant, axis point, method) for every cell before seeds, in the space's order: the variant's method
    section, then the point's knob values, then every override rule that matches, applied in turn."""
    axes = {**({"loss": space.axes.loss} if space.axes.loss is not None else {}), "lr": space.axes.lr,
            **space.axes.knob_axes()}
    for variant, section in space.variants.items():
        for combo in itertools.product(*axes.values()):
            point = dict(zip(axes, combo))
            cell = {"variant": variant, **point}
            knobs = {**section.method, **{k: v for k, v in point.items() if k != "lr"}}
            for rule in space.overrides:
                if _matches(rule.when, cell):
                    knobs.update(rule.set)
            yield variant, point, parse_method(knobs)


def configuration_problems(space: SpaceFile) -> list[tuple[str, str]]:
    """What each cell's method finds wrong with its settings taken together, or with this student/teacher pair
    (e.g. a FitNet hint stage the teacher does not have); one problem per variant and knob."""
    problems = []
    for variant, point, method in cell_methods(space):
        if method.method.config_problems.__func__ is Method.config_problems.__func__:
            continue  # the method checks nothing beyond its knobs: no need to build the models' feature info
        size = parse_dataset(space.dataset).geometry.image_size
        student, teacher = feature_info(space.student.arch, size), feature_info(space.teacher.arch, size)
        for knob, message in method.method.config_problems(method.config, student, teacher):
            path = f"variants.{variant}.method.{knob}"
            if not any(p == path for p, _ in problems):
                problems.append((path, f"expected {message}"))
    return problems


def expand_runs(space: SpaceFile, data: DataSpec, teacher_identity: dict) -> tuple[RunSpec, ...]:
    recipe = student_recipe(space)
    context = experiment_context(space, data, teacher_identity)
    runs = []
    for variant, point, method in cell_methods(space):
        section = space.variants[variant]
        loss = point.get("loss", method.loss)  # the report's loss label; SimKD's loss axis names it
        identity = {**context, "method": method.as_record(), "lr": point["lr"]}
        cell_id = f"{variant}-{loss}-lr{point['lr']:g}-{digest(identity)}"
        cell = {"variant": variant, **point}
        for seed in space.axes.seed:
            run_cell = {**cell, "seed": seed}
            if space.include and not any(_matches(rule, run_cell) for rule in space.include):
                continue
            if any(_matches(rule, run_cell) for rule in space.exclude):
                continue
            run_id = f"{variant}-{loss}-lr{point['lr']:g}-s{seed}-{digest({**identity, 'seed': seed})}"
            labels = {"variant": variant, "title": section.title, "cell_id": cell_id, **point}
            runs.append(RunSpec(run_id, space.student.arch, method, float(point["lr"]), seed, recipe, labels))
    return tuple(runs)


def _matches(rule: dict, cell: dict) -> bool:
    for key, wanted in rule.items():
        options = wanted if isinstance(wanted, list) else [wanted]
        if cell.get(key) not in options:
            return False
    return True
