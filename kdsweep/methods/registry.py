"""The method registry: a name -> `Method` subclass table (kdsweep/registry.py), after mdistiller's distillers.

A method registers itself by being a file in this package that decorates its class with `@register_method("name")`;
a researcher's own method can be a plug-in file (kdsweep/registry.py: `load_plugins`).

A run's method is a `MethodSpec`: the method's name and its config. It is stored as one flat record,
{"kind": name, **knobs}, which is also what run ids hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdsweep import typed_config
from kdsweep.registry import KnobsReadThrough, Registry, load_plugins

_METHODS = Registry("method", "kdsweep.methods")
register_method = _METHODS.register  # class decorator: @register_method("dkd")


def methods() -> dict[str, type]:
    """Every registered method by name, in name order."""
    return _METHODS.all()


def method_class(kind: str) -> type:
    return _METHODS.get(kind)


__all__ = ["MethodSpec", "build_method", "load_plugins", "method_class", "method_problems", "methods",
           "parse_method", "register_method"]


@dataclass(frozen=True)
class MethodSpec(KnobsReadThrough):
    """A run's method: its registered name and its config (one frozen dataclass per method); knobs read through."""

    kind: str
    config: object

    @property
    def method(self) -> type:
        return method_class(self.kind)

    @property
    def loss(self) -> str:
        """The run's loss label in the report (SimKD: l2 / kl / kl_raw; other methods: their name)."""
        return self.method.loss_label(self.config)

    def as_record(self) -> dict:
        return {"kind": self.kind, **typed_config.as_record(self.config)}

    @classmethod
    def from_record(cls, record: dict) -> MethodSpec:
        kind = record.get("kind", "simkd")
        return cls(kind, typed_config.from_record(method_class(kind).Config, record))


def method_problems(values: dict, path: str) -> list[tuple[str, str]]:
    """Every problem of `values` ({"kind": ..., knob: value}) as a method section at key path `path`."""
    kind = values.get("kind", "simkd")
    try:
        cls = method_class(kind)
    except KeyError as err:
        return [(f"{path}.kind", err.args[0])]
    knobs = {k: v for k, v in values.items() if k != "kind"}
    return typed_config.problems(cls.Config, knobs, path, owner=f"method {kind}")


def parse_method(values: dict) -> MethodSpec:
    """A MethodSpec from valid `values`; raises ValueError listing the problems otherwise."""
    found = method_problems(values, "method")
    if found:
        raise ValueError("; ".join(f"{p}: {m}" for p, m in found))
    kind = values.get("kind", "simkd")
    return MethodSpec(kind, typed_config.build(method_class(kind).Config,
                                               {k: v for k, v in values.items() if k != "kind"}))


def build_method(spec: MethodSpec, student, teacher):
    """The method module of `spec` for this student (and teacher; None only for methods that need none)."""
    cls = spec.method
    if cls.needs_teacher and teacher is None:
        raise ValueError(f"method '{spec.kind}' needs a teacher")
    return cls(spec.config, student, teacher)
