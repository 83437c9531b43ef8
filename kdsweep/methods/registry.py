"""The method registry: a name -> `Method` subclass table, after timm's model registry and mdistiller's distillers.

Every module of this package is imported on the first lookup, so a method registers itself by being a file here
that decorates its class with `@register_method("name")`. A researcher's own method can live outside kdsweep: a
search space's `plugins: [path/to/my_method.py]` (or `kdsweep train --plugin FILE`) imports that file in the
driver and in every trial before anything is built.

A run's method is a `MethodSpec`: the method's name and its config. It is stored as one flat record,
{"kind": name, **knobs}, which is also what run ids hash.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path

from kdsweep import typed_config
from kdsweep.errors import UserError, unknown_name

_METHODS: dict[str, type] = {}
_BUILTINS_LOADED = False


def register_method(name: str):
    """Class decorator: make `cls` (a Method subclass with a `Config`) the method called `name`."""
    def decorate(cls):
        if name in _METHODS and _METHODS[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"method '{name}' is registered twice: {_METHODS[name]} and {cls}")
        typed_config.knobs(cls.Config)  # fails early on a field type configs do not support
        cls.name = name
        _METHODS[name] = cls
        return cls
    return decorate


def methods() -> dict[str, type]:
    """Every registered method by name, in name order."""
    _load_builtins()
    return dict(sorted(_METHODS.items()))


def method_class(kind: str) -> type:
    known = methods()
    if kind not in known:
        raise KeyError(unknown_name("method", str(kind), known))
    return known[kind]


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    package = Path(__file__).parent
    for module in sorted(pkgutil.iter_modules([str(package)]), key=lambda m: m.name):
        importlib.import_module(f"kdsweep.methods.{module.name}")


def load_plugins(paths) -> None:
    """Import each plug-in file (a method or dataset of the user's own) once per process."""
    for path in paths:
        path = str(Path(path).expanduser().resolve())
        name = f"kdsweep_plugin_{abs(hash(path)):x}"
        if name in sys.modules:
            continue
        if not Path(path).is_file():
            raise UserError(f"plug-in {path} does not exist; `plugins` lists Python files that register methods.")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise UserError(f"plug-in {path} failed to import: {type(err).__name__}: {err}") from err


@dataclass(frozen=True)
class MethodSpec:
    """A run's method: its registered name and its config (one frozen dataclass per method)."""

    kind: str
    config: object

    def __getattr__(self, name: str):
        """The config's knobs read through: `run.method.taps`."""
        if name == "config" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.config, name)

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
