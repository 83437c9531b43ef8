"""Typed configs: one frozen dataclass per concept, validated from plain YAML/JSON/CLI values, without pydantic.

A config is a frozen dataclass whose fields are declared with `knob(...)`: the default, and what a valid value is
(a set of choices, numeric bounds, a fixed length for tuples). The same class is

- what the engine trains with (it crosses process boundaries as `as_record(config)`, a flat JSON dict),
- what a search space's section is validated against (`problems(Config, values, path)`: every problem at once,
  each with its key path, the value and, for an unknown key or choice, a did-you-mean),
- what `kdsweep train --method KNOB=VALUE` parses, and what `kdsweep methods` lists.

    @dataclass(frozen=True)
    class DKDConfig:
        alpha: float = knob(1.0, ge=0, doc="weight of the target-class term (TCKD)")

Types are checked strictly, as in the rest of the space file: a bool is not a number, a string is not a number,
an int is accepted where a float is expected. `float | None` admits null; `tuple[float, float]` takes a
two-element list. Nothing here imports torch, Ray or pydantic: `kdsweep train` and `kdsweep bench` run without them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from functools import cache

from kdsweep.errors import closest

# Seeds are unsigned 32-bit integers, the range numpy and most seeding APIs take (torch.manual_seed takes 64 bits,
# but trials.parquet stores seeds as int64): larger ones would validate and then fail inside every trial.
MAX_SEED = 2**32 - 1
# The largest float32: float knobs and learning rates beyond it overflow inside the engine (lr 1e300 crashed the
# optimizer step), so validation refuses them.
FLOAT32_MAX = 3.4028234663852886e38

Problem = tuple[str, str]  # (key path, what is wrong and what was expected)


def knob(default, *, choices: tuple | None = None, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None, doc: str = ""):
    """A config field: its default and what a valid value is. `doc` is shown by `kdsweep methods`."""
    return field(default=default, metadata={"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc})


@dataclass(frozen=True)
class Knob:
    """One field of a config, with its type resolved: what validation, listings and column naming read."""

    name: str
    kind: type  # bool | int | float | str | tuple
    optional: bool  # admits None
    length: int | None  # tuples: the fixed number of elements; None for `tuple[int, ...]` (any length)
    element: type | None  # tuples: the elements' type (int or float)
    default: object
    choices: tuple | None
    bounds: dict  # {"ge": 0, ...}: only the bounds that are set
    doc: str

    def describe(self) -> str:
        """'float >= 0 (default 1.0): weight of ...'."""
        if self.choices:
            what = " | ".join(map(str, self.choices))
        elif self.kind is tuple:
            what = f"{self.length} numbers" if self.length else f"a list of {_PLURAL[self.element]}"
        else:
            what = self.kind.__name__
        what += " " + ", ".join(f"{_SYMBOL[b]} {v:g}" for b, v in self.bounds.items()) if self.bounds else ""
        if self.optional:
            what += " or null"
        default = ", ".join(f"{v:.4g}" for v in self.default) if isinstance(self.default, tuple) else repr(self.default)
        return f"{what} (default {default})" + (f": {self.doc}" if self.doc else "")


_SYMBOL = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_PLURAL = {int: "integers", float: "numbers"}


@cache
def knobs(cls: type) -> tuple[Knob, ...]:
    """The fields of config class `cls`, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind, optional, length, element = _resolve(hints[f.name])
        meta = f.metadata
        out.append(Knob(
            name=f.name, kind=kind, optional=optional, length=length, element=element, default=f.default,
            choices=meta.get("choices"), bounds={b: meta[b] for b in _SYMBOL if meta.get(b) is not None},
            doc=meta.get("doc", ""),
        ))
    return tuple(out)


def knob_names(cls: type) -> tuple[str, ...]:
    return tuple(k.name for k in knobs(cls))


def _resolve(annotation) -> tuple[type, bool, int | None, type | None]:
    """(base type, optional, tuple length, tuple element type) of a field annotation such as `float | None`,
    `tuple[float, float]` (two numbers) or `tuple[int, ...]` (a list of integers of any length)."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        (annotation,) = args
        origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple, optional, None, args[0]
        if len(set(args)) != 1 or args[0] not in (int, float):
            raise TypeError(f"tuple config fields hold ints or floats of one type; got {annotation!r}")
        return tuple, optional, len(args), args[0]
    if annotation not in (bool, int, float, str):
        raise TypeError(f"config fields are bool, int, float, str, optional or tuples of numbers; got {annotation!r}")
    return annotation, optional, None, None


def value_problems(k: Knob, value, path: str) -> list[Problem]:
    """What is wrong with `value` for knob `k` (empty when it is valid)."""
    if value is None:
        return [] if k.optional else [(path, f"expected {k.describe().split(' (default')[0]}, got null")]
    if k.kind is tuple:
        items = value if isinstance(value, (list, tuple)) else None
        wanted = f"{k.length} {_PLURAL[k.element]}" if k.length else _PLURAL[k.element]
        if items is None or (k.length and len(items) != k.length) or not all(_has_type(v, k.element) for v in items):
            return [(path, f"expected a list of {wanted}, got {value!r}")]
        return [p for i, v in enumerate(items) for p in _bound_problems(k, v, f"{path}[{i}]")]
    if not _has_type(value, k.kind):
        expected = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}[k.kind]
        return [(path, f"expected {expected}, got {value!r}")]
    if k.choices is not None and value not in k.choices:
        hint = closest(str(value), map(str, k.choices)) if isinstance(value, str) else None
        return [(path, f"expected one of {', '.join(map(str, k.choices))}"
                       f"{f' (did you mean {hint!r}?)' if hint else ''}, got {value!r}")]
    return _bound_problems(k, value, path)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_type(value, kind: type) -> bool:
    if kind is float:
        return _is_number(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def float32_problem(value: float) -> str | None:
    """Why `value` cannot be a float the engine computes with (in float32), or None."""
    if abs(value) > FLOAT32_MAX:
        return f"expected a value within float32's range (at most {FLOAT32_MAX:.1e} in size), got {value!r}"
    return None


def _bound_problems(k: Knob, value, path: str) -> list[Problem]:
    if _is_number(value) and not math.isfinite(value):  # .inf passes every bound; an lr of .inf diverges at once
        return [(path, f"expected a finite number, got {value!r}")]
    if float in (k.kind, k.element) and (problem := float32_problem(value)):
        return [(path, problem)]
    ok = {"ge": value >= k.bounds.get("ge", value), "gt": "gt" not in k.bounds or value > k.bounds["gt"],
          "le": value <= k.bounds.get("le", value), "lt": "lt" not in k.bounds or value < k.bounds["lt"]}
    broken = [f"{_SYMBOL[b]} {k.bounds[b]:g}" for b in k.bounds if not ok[b]]
    return [(path, f"expected a value {' and '.join(broken)}, got {value!r}")] if broken else []


def problems(cls: type, values: dict, path: str, owner: str = "this section", noun: str = "knob") -> list[Problem]:
    """Every problem of `values` as (a part of) a `cls` config: unknown keys (with a did-you-mean and the allowed
    keys) and invalid values. `path` prefixes the key paths, e.g. 'variants.dkd.method'; `owner` names the config
    in messages ('method dkd'), `noun` its fields ('knob', 'key')."""
    if not isinstance(values, dict):
        return [(path, f"expected a mapping of {noun}s to values, got {values!r}")]
    by_name = {k.name: k for k in knobs(cls)}
    out = []
    for name, value in values.items():
        where = f"{path}.{name}" if path else str(name)
        if name not in by_name:
            hint = closest(str(name), by_name, cutoff=0.6)  # knob names are short: at 0.5, 'taps' would suggest 'beta'
            out.append((where, f"unknown {noun} {str(name)!r}{f' (did you mean {hint!r}?)' if hint else ''}; "
                               + (f"{owner} has: {', '.join(by_name)}" if by_name else f"{owner} has no {noun}s")))
        else:
            out.extend(value_problems(by_name[name], value, where))
    return out


def build(cls: type, values: dict):
    """A `cls` from valid `values` (lists become tuples); raises ValueError listing the problems otherwise."""
    found = problems(cls, values, "")
    if found:
        raise ValueError("; ".join(f"{p}: {m}" for p, m in found))
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def knob_text(value) -> str:
    """A knob value as text: tuples as '0.667,0.333', floats in %g."""
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def as_record(config) -> dict:
    """Flat, JSON- and parquet-friendly values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def from_record(cls: type, record: dict):
    """A `cls` from a stored record, ignoring keys it does not have (a record written by another version)."""
    names = set(knob_names(cls))
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in names})
