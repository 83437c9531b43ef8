"""Reading a search-space file: safe YAML, `--set` overrides, strict validation, every problem reported at once."""

from __future__ import annotations

import copy
import re
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from kdsweep.errors import UserError, closest
from kdsweep.methods import load_plugins
from kdsweep.methods.simkd import warn_if_replication_only
from kdsweep.space.checks import cross_section_problems
from kdsweep.space.expand import Space, configuration_problems, data_spec, expand_runs, teacher_plan
from kdsweep.ids import is_resolved, teacher_identity
from kdsweep.space.schema import SpaceFile
from kdsweep.yamlsafe import (MAX_CHARACTERS, MAX_DEPTH, MAX_VALUES, LimitExceeded, excerpt, load_yaml, parse_value,
                              yaml_problem)
from kdsweep.storage import absolute_location


class SpaceError(UserError):
    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source, self.problems = source, problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  - {path or '(top level)'}: {message}" for path, message in problems)
        super().__init__(
            f"search space {source} is invalid ({count}):\n{lines}\n"
            f"Fix the file (or the --set value) and check it with `kdsweep validate {source}`."
        )


def load_space(path: str | Path, overrides: list[str] = (), base: Path | None = None, *,
               text: str | None = None, root: str | None = None, known_teacher: dict | None = None) -> Space:
    """Parse, override, validate and expand a search-space file; raises SpaceError (a UserError) when invalid.

    Relative paths inside the file (storage, dataset.root, teacher.checkpoint) are taken relative to `base`,
    by default the working directory (where `kdsweep run` and `ray job submit --working-dir` start).
    `text` gives the document instead of reading `path` (a space.yaml fetched from object storage); `root`
    fixes the experiment folder (an experiment opened where it lies now, wherever it was first run).
    `known_teacher` is the teacher identity an experiment recorded, used when its checkpoint cannot be read here
    (an experiment copied to a laptop without the teacher's file can still be reported).
    """
    source = str(path)
    raw = parse_document(source, text)
    raw = apply_overrides(source, raw, overrides)
    base = base or Path.cwd()
    space_file = validate_document(source, raw, base)
    root = root or f"{absolute_location(space_file.storage, base)}/{space_file.experiment}"
    data = data_spec(space_file, base)
    teacher = teacher_plan(space_file, root, data, base)
    training_run_id = teacher.training_run.run_id if teacher.training_run else None
    identity = teacher_identity(teacher.spec.arch, teacher.spec.checkpoint, training_run_id)
    if not is_resolved(identity) and known_teacher and known_teacher.get("arch") == teacher.spec.arch:
        identity = known_teacher
    runs = expand_runs(space_file, data, identity)
    warn_if_replication_only(r.method for r in runs)
    if not runs:
        raise SpaceError(source, [("include/exclude", "these rules remove every cell: nothing would run")])
    plugins = tuple(absolute_location(p, base) for p in space_file.plugins)
    return Space(space_file, source, raw, root, data, teacher, identity, runs, plugins=plugins)


def parse_document(source: str, text: str | None = None) -> dict:
    if text is None:
        try:
            text = Path(source).read_text()
        except FileNotFoundError:
            raise UserError(f"search space {source} does not exist (looked in {Path(source).resolve()}).") from None
        except IsADirectoryError:
            raise UserError(f"search space {source} is a directory; expected a YAML file.") from None
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"search space {source} cannot be read: {err}.") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = yaml_problem(err)
        if isinstance(err, LimitExceeded):
            raise UserError(
                f"search space {source} is refused{where}: {problem}. kdsweep reads at most {MAX_VALUES:,} values "
                f"(aliases expanded), {MAX_DEPTH} levels deep, in {MAX_CHARACTERS:,} characters; a search space "
                f"needs a few hundred values."
            ) from None
        raise UserError(
            f"search space {source} is not valid YAML{where}: {problem}. Expected a YAML mapping with "
            f"`experiment`, `teacher`, `student`, `dataset`, `variants` and `axes` (see search_spaces/smoke.yaml)."
        ) from None
    if raw is None:
        raise UserError(
            f"search space {source} is empty. Expected a YAML mapping with `experiment`, `teacher`, `student`, "
            f"`dataset`, `variants` and `axes` (see search_spaces/smoke.yaml)."
        )
    if not isinstance(raw, dict):
        raise UserError(
            f"search space {source} must be a YAML mapping at the top level, found a {type(raw).__name__}."
        )
    return raw


def apply_overrides(source: str, raw: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (values parsed as YAML: `2`, `[0, 1]`, `l2`) to a copy of `raw`."""
    raw = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append((f"--set {item}", "expected KEY.PATH=VALUE, e.g. --set recipe.epochs=2"))
            continue
        try:
            value = parse_value(text)
        except yaml.YAMLError as err:
            problems.append((f"--set {key}", f"the value {excerpt(text)} is not valid YAML: {yaml_problem(err)}"))
            continue
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                problems.append((f"--set {item}", f"{part} is not a section"))
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = value
    if problems:
        raise SpaceError(source, problems)
    return raw


def validate_document(source: str, raw: dict, base: Path | None = None) -> SpaceFile:
    """The validated file; its plug-ins (paths relative to `base`) are imported first, so their methods validate."""
    plugins = raw.get("plugins") if isinstance(raw.get("plugins"), list) else []
    try:
        load_plugins(absolute_location(str(p), base or Path.cwd()) for p in plugins)
    except UserError as err:
        raise SpaceError(source, [("plugins", str(err))]) from None
    try:
        space = SpaceFile.model_validate(raw)
    except ValidationError as err:
        failed = {e["loc"][0] for e in err.errors() if e["loc"]}
        problems = [_describe(e) for e in err.errors()]
        raise SpaceError(source, problems + cross_section_problems(_valid_sections(raw, failed))) from None
    problems = cross_section_problems(space)
    if problems:
        raise SpaceError(source, problems)
    problems = configuration_problems(space)  # needs every section valid: each cell's merged method config
    if problems:
        raise SpaceError(source, problems)
    return space


def _valid_sections(raw: dict, failed: set) -> types.SimpleNamespace:
    """The top-level sections of `raw` that validate on their own (given or defaulted), None for the others."""
    sections = {}
    for name, field in SpaceFile.model_fields.items():
        if name in failed or (name not in raw and field.is_required()):
            value = None
        elif name in raw:
            annotation = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            value = TypeAdapter(annotation).validate_python(raw[name], strict=True)
        else:
            value = field.get_default(call_default_factory=True)
        sections[name] = value
    variants = raw.get("variants")
    names = [k for k in variants if isinstance(k, str)] if isinstance(variants, dict) else None
    return types.SimpleNamespace(**sections, variant_names=names)


def _describe(error: dict) -> tuple[str, str]:
    loc = error["loc"]
    path = _format_path(loc)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = closest(str(loc[-1]), allowed) if allowed else None
        message = f"unknown key{f' (did you mean {hint!r}?)' if hint else ''}"
        if allowed:
            message += f"; allowed here: {', '.join(allowed)}"
        return path, message
    if error["type"] == "missing":
        return path, "required key is missing"
    if error["type"] == "value_error":  # our own validators name the value already
        return path, message
    message = re.sub(r" or instance of \w+", "", message).replace("a valid dictionary", "a mapping")
    if error["type"] == "literal_error" and isinstance(error["input"], str):
        hint = closest(error["input"], re.findall(r"'([^']*)'", error.get("ctx", {}).get("expected", "")))
        if hint:
            message += f" (did you mean {hint!r}?)"
    return path, f"{message}; got {error['input']!r}"


def _format_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (isinstance(part, str) and (part.startswith("function-") or "[" in part)):
            out += f".{part}" if out else str(part)
    return out


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names of the section at `loc` (walking SpaceFile's annotations), or [] if unknown."""
    node = SpaceFile
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            if part not in node.model_fields:
                return []
            node = _unwrap(node.model_fields[part].annotation)
        elif typing.get_origin(node) in (dict, list):
            node = _unwrap(typing.get_args(node)[-1])
        else:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _unwrap(annotation):
    """Strip Optional[...] and Annotated[...] down to the model / container type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        else:
            return annotation
