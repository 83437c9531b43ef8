"""Checks that need several sections of a search space at once. Each problem: (key path, message)."""

from __future__ import annotations

from pydantic import ValidationError

from kdsweep.data import DataSpec
from kdsweep.errors import UserError, unknown_name
from kdsweep.methods.config import KNOBS
from kdsweep.space.schema import MethodSection

# Knobs that cannot be axes: `loss` already is one, and tuples do not make grid values.
_AXIS_KNOBS = tuple(k for k in KNOBS if k not in ("loss", "multi_weights"))


def cross_section_problems(space) -> list[tuple[str, str]]:
    """Problems that need several sections at once. `space` is a SpaceFile, or - for a file that failed schema
    validation - a namespace of the top-level sections that did validate (the others None): every check runs whose
    sections are all there, so the schema's problems and these are reported together."""
    def have(*names: str) -> bool:
        return all(getattr(space, name) is not None for name in names)

    problems = []
    if have("dataset"):
        try:
            DataSpec(**space.dataset.model_dump()).validate()
        except UserError as err:
            problems.append(("dataset", str(err).removeprefix("invalid dataset section: ").rstrip(".")))
    if have("recipe"):
        problems += _milestone_problems("recipe", space.recipe)
    if have("teacher") and space.teacher.train is not None:
        problems += _milestone_problems("teacher.train", space.teacher.train)
    knob_axes = space.axes.knob_axes() if have("axes") else {}
    if have("axes"):
        problems += _axis_problems(space.axes, knob_axes)
    if have("variants", "axes"):
        axis_names = {"loss", *knob_axes}
        for variant, section in space.variants.items():
            clash = sorted(axis_names & set(section.method.knobs()))
            if clash:
                problems.append((
                    f"variants.{variant}.method",
                    f"sets {', '.join(clash)}, which {'is an axis' if len(clash) == 1 else 'are axes'}; "
                    f"remove it from the variant or from `axes`, or use an `overrides` rule",
                ))
    # The variants' names are known even when a variant's content is invalid.
    variant_names = list(space.variants) if have("variants") else getattr(space, "variant_names", None)
    if have("baseline") and variant_names is not None and space.baseline.variant is not None:
        if space.baseline.variant not in variant_names:
            problems.append(("baseline.variant", unknown_name("variant", space.baseline.variant, variant_names)))
    if have("variants", "axes"):
        match_values = {
            "variant": list(space.variants), "loss": space.axes.loss, "lr": space.axes.lr, "seed": space.axes.seed,
            **knob_axes,
        }
        rules = []
        if have("include"):
            rules += [(f"include[{i}]", r) for i, r in enumerate(space.include)]
        if have("exclude"):
            rules += [(f"exclude[{i}]", r) for i, r in enumerate(space.exclude)]
        for path, rule in rules:
            problems.extend(_rule_problems(path, rule, match_values))
        if have("overrides"):
            cell_values = {k: v for k, v in match_values.items() if k != "seed"}
            for i, r in enumerate(space.overrides):
                when = dict(r.when)
                if when.pop("seed", None) is not None:
                    problems.append((f"overrides[{i}].when.seed", "overrides set knobs per cell and every seed of a "
                                     "cell trains with the same knobs; select by variant, loss, lr or a knob axis"))
                    if not when:
                        continue
                problems.extend(_rule_problems(f"overrides[{i}].when", when, cell_values))
    if have("report"):
        for loss in space.report.loss_names:
            if loss not in ("l2", "kl", "kl_raw"):
                problems.append((f"report.loss_names.{loss}", unknown_name("loss", loss, ("l2", "kl", "kl_raw"))))
    gpu = space.resources.gpu if have("resources") else 0
    if gpu > 1 and gpu != int(gpu):
        problems.append(("resources.gpu", f"a fraction of one GPU or a whole number of GPUs, got {gpu}"))
    return problems


def _axis_problems(axes, knob_axes: dict) -> list[tuple[str, str]]:
    """Knob axes must name an axis-able knob and hold valid values; every axis's values must be distinct."""
    problems = []
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
        values = getattr(axes, axis) if axis in ("loss", "lr", "seed") else knob_axes[axis]
        if isinstance(values, list) and len(set(map(repr, values))) != len(values):
            problems.append((f"axes.{axis}", f"values must be distinct, got {values}"))
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
