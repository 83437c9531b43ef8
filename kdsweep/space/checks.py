"""Checks that need several sections of a search space at once. Each problem: (key path, message)."""

from __future__ import annotations

from kdsweep import typed_config
from kdsweep.data import dataset_problems
from kdsweep.engine.recipe import Recipe, TeacherRecipe, section_problems
from kdsweep.errors import UserError, unknown_name
from kdsweep.methods import method_class, method_problems, methods


def cross_section_problems(space) -> list[tuple[str, str]]:
    """Problems that need several sections at once. `space` is a SpaceFile, or - for a file that failed schema
    validation - a namespace of the top-level sections that did validate (the others None): every check runs whose
    sections are all there, so the schema's problems and these are reported together."""
    def have(*names: str) -> bool:
        return all(getattr(space, name) is not None for name in names)

    problems = []
    if have("dataset"):
        problems += dataset_problems(space.dataset, "dataset")
    if have("recipe"):
        problems += section_problems(Recipe, space.recipe, "recipe")
    if have("teacher") and space.teacher.train is not None:
        problems += section_problems(TeacherRecipe, space.teacher.train, "teacher.train")
    knob_axes = space.axes.knob_axes() if have("axes") else {}
    kinds = _variant_kinds(space.variants) if have("variants") else {}
    if have("variants"):
        for variant, section in space.variants.items():
            problems += method_problems(section.method, f"variants.{variant}.method")
    if have("axes", "variants"):  # an axis is a knob of the variants' methods: unknown until they validate
        problems += _axis_problems(space.axes, kinds)
    if have("variants", "axes"):
        axis_names = set(space.axes.method_axes())
        for variant, section in space.variants.items():
            clash = sorted(axis_names & (set(section.method) - {"kind"}))
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
        match_values = {"variant": list(space.variants), "lr": space.axes.lr, "seed": space.axes.seed,
                        **space.axes.method_axes()}
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
                problems.extend(_override_problems(f"overrides[{i}].set", r, kinds))
    if have("report"):
        labels = {label for cls in methods().values() for label in cls.loss_display}
        for loss in space.report.loss_names:
            if loss not in labels:
                problems.append((f"report.loss_names.{loss}", unknown_name("loss", loss, labels)))
    gpu = space.resources.gpu if have("resources") else 0
    if gpu > 1 and gpu != int(gpu):
        problems.append(("resources.gpu", f"a fraction of one GPU or a whole number of GPUs, got {gpu}"))
    return problems


def _variant_kinds(variants) -> dict[str, type]:
    """variant -> its method's class, for the variants whose method exists."""
    out = {}
    for variant, section in variants.items():
        try:
            out[variant] = method_class(section.method.get("kind", "simkd"))
        except KeyError:
            pass  # reported by method_problems
    return out


def _axis_problems(axes, kinds: dict[str, type]) -> list[tuple[str, str]]:
    """Every method axis must be a knob of every variant's method and hold valid values for it; every axis's
    values must be distinct."""
    problems = []
    used = dict.fromkeys(name for cls in kinds.values() for name in typed_config.knob_names(cls.Config))
    for name, values in axes.method_axes().items():
        path = f"axes.{name}"
        if name == "kind":
            problems.append((path, "the method is a variant's own choice: give each method a variant of its own "
                             "(variants: {dkd: {title: DKD, method: {kind: dkd}}})"))
            continue
        if name not in used:
            problems.append((path, unknown_name("axis", name, ("loss", "lr", "seed", *used))))
            continue
        if not isinstance(values, list) or not values:
            problems.append((path, f"expected a non-empty list of values, got {values!r}"))
            continue
        seen = set()
        for variant, cls in kinds.items():
            by_name = {k.name: k for k in typed_config.knobs(cls.Config)}
            if name not in by_name:
                problems.append((path, f"variant {variant} uses method {cls.name}, which has no knob {name!r}; "
                                 f"its knobs: {', '.join(by_name) or 'none'}. Put that method's cells in a space "
                                 f"of their own, or set the knob per variant instead of as an axis"))
                continue
            for i, value in enumerate(values):
                for where, message in typed_config.value_problems(by_name[name], value, f"{path}[{i}]"):
                    if (where, message) not in seen:
                        seen.add((where, message))
                        problems.append((where, message))
    for axis in ("lr", "seed", *axes.method_axes()):
        values = getattr(axes, axis) if axis in ("lr", "seed") else axes.method_axes()[axis]
        if isinstance(values, list) and len(set(map(repr, values))) != len(values):
            problems.append((f"axes.{axis}", f"values must be distinct, got {values}"))
    return problems


def _override_problems(path: str, rule, kinds: dict[str, type]) -> list[tuple[str, str]]:
    """An override's `set` must hold valid knobs of the method of every variant it can match."""
    if "kind" in rule.set:
        return [(f"{path}.kind", "the method is a variant's own choice; an override sets knobs of it")]
    wanted = rule.when.get("variant")
    targets = [wanted] if isinstance(wanted, str) else wanted if isinstance(wanted, list) else list(kinds)
    problems = []
    for variant in targets:
        if variant in kinds:
            for problem in method_problems({"kind": kinds[variant].name, **rule.set}, path):
                if problem not in problems:
                    problems.append(problem)
    return problems


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
