"""Checks that need several sections of a search space at once. Each problem: (key path, message)."""

from __future__ import annotations

from pydantic import ValidationError

from kdsweep.data import DataSpec
from kdsweep.errors import UserError, unknown_name
from kdsweep.methods.config import KNOBS
from kdsweep.space.schema import MethodSection, SpaceFile

# Knobs that cannot be axes: `loss` already is one, and tuples do not make grid values.
_AXIS_KNOBS = tuple(k for k in KNOBS if k not in ("loss", "multi_weights"))


def cross_section_problems(space: SpaceFile) -> list[tuple[str, str]]:
    problems = []
    try:
        DataSpec(**space.dataset.model_dump()).validate()
    except UserError as err:
        problems.append(("dataset", str(err).removeprefix("invalid dataset section: ").rstrip(".")))
    problems += _milestone_problems("recipe", space.recipe)
    if space.teacher.train is not None:
        problems += _milestone_problems("teacher.train", space.teacher.train)
    knob_axes = space.axes.knob_axes()
    for name, values in knob_axes.items():
        path = f"axes.{name}"
        if name not in _AXIS_KNOBS:
            problems.append((path, unknown_name("axis", name, ("loss", "lr", "seed", *_AXIS_KNOBS))))
            continue
        if not isinstance(values, list) or not values:
            problems.append((path, f"expected a non-empty list of values, got {values!r}"))
            continue
        for i, value in enumerate(values):
            try:
                MethodSection(**{name: value})
            except ValidationError as err:
                problems.append((f"{path}[{i}]", f"{err.errors()[0]['msg']}, got {value!r}"))
    for axis in ("loss", "lr", "seed", *knob_axes):
        values = getattr(space.axes, axis, None) if axis in ("loss", "lr", "seed") else knob_axes[axis]
        if isinstance(values, list) and len(set(map(repr, values))) != len(values):
            problems.append((f"axes.{axis}", f"values must be distinct, got {values}"))

    axis_names = {"loss", *knob_axes}
    for variant, section in space.variants.items():
        clash = sorted(axis_names & set(section.method.knobs()))
        if clash:
            problems.append((
                f"variants.{variant}.method",
                f"sets {', '.join(clash)}, which {'is an axis' if len(clash) == 1 else 'are axes'}; "
                f"remove it from the variant or from `axes`, or use an `overrides` rule",
            ))

    if space.baseline.variant is not None and space.baseline.variant not in space.variants:
        problems.append(("baseline.variant", unknown_name("variant", space.baseline.variant, space.variants)))

    match_values = {
        "variant": list(space.variants), "loss": space.axes.loss, "lr": space.axes.lr, "seed": space.axes.seed,
        **knob_axes,
    }
    rules = [(f"include[{i}]", r) for i, r in enumerate(space.include)]
    rules += [(f"exclude[{i}]", r) for i, r in enumerate(space.exclude)]
    rules += [(f"overrides[{i}].when", r.when) for i, r in enumerate(space.overrides)]
    for path, rule in rules:
        problems.extend(_rule_problems(path, rule, match_values))

    for loss in space.report.loss_names:
        if loss not in ("l2", "kl", "kl_raw"):
            problems.append((f"report.loss_names.{loss}", unknown_name("loss", loss, ("l2", "kl", "kl_raw"))))
    if space.resources.gpu > 1 and space.resources.gpu != int(space.resources.gpu):
        problems.append(("resources.gpu", f"a fraction of one GPU or a whole number of GPUs, got {space.resources.gpu}"))
    return problems


def _milestone_problems(path: str, section) -> list[tuple[str, str]]:
    """Explicit milestones must increase and lie inside the run: one at or past `epochs` would never fire, which is
    almost always a recipe copied from a longer run (omit `milestones` to scale the reference 150/180/210)."""
    m = section.milestones
    if m is None:
        return []
    if any(b <= a for a, b in zip(m, m[1:])):
        return [(f"{path}.milestones", f"must be strictly increasing, got {m}")]
    late = [x for x in m if x >= section.epochs]
    if late:
        return [(f"{path}.milestones", f"{late} not below {path}.epochs ({section.epochs}), so they would never take "
                 f"effect; omit `milestones` to scale the reference 150/180/210 to {section.epochs} epochs")]
    return []


def _rule_problems(path: str, rule: dict, match_values: dict) -> list[tuple[str, str]]:
    if not rule:
        return [(path, "an empty rule would match every cell; name at least one key")]
    problems = []
    for key, wanted in rule.items():
        if key not in match_values:
            problems.append((f"{path}.{key}", unknown_name("rule key", key, match_values)))
            continue
        for value in wanted if isinstance(wanted, list) else [wanted]:
            if value not in match_values[key]:
                problems.append((
                    f"{path}.{key}",
                    f"{value!r} is not a value of {key}; the space has {', '.join(map(str, match_values[key]))}",
                ))
    return problems
