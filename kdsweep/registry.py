"""Name -> class tables for the plug-in kinds (methods, datasets), after timm's model registry, and plug-in files.

A `Registry` is filled by its package's own modules: on the first lookup every module of the package is imported,
so a built-in method or dataset registers itself by being a file there that decorates its class. A researcher's
own can live outside kdsweep: a search space's `plugins: [path/to/mine.py]` (or `kdsweep train --plugin FILE`)
imports that file in the driver and in every trial before anything is built (`load_plugins`).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from kdsweep import typed_config
from kdsweep.errors import UserError, unknown_name


class Registry:
    """Registered classes of one kind ("method", "dataset"), each with a typed `Config` (typed_config.py)."""

    def __init__(self, kind: str, package: str):
        self.kind = kind  # the word used in messages
        self.package = package  # imported module by module on the first lookup
        self._classes: dict[str, type] = {}
        self._builtins_loaded = False

    def register(self, name: str):
        """Class decorator: make `cls` the entry called `name` (sets `cls.name`)."""
        def decorate(cls):
            known = self._classes.get(name)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.kind} '{name}' is registered twice: {known} and {cls}")
            typed_config.knobs(cls.Config)  # fails early on a field type configs do not support
            cls.name = name
            self._classes[name] = cls
            return cls
        return decorate

    def all(self) -> dict[str, type]:
        """Every registered class by name, in name order."""
        self._load_builtins()
        return dict(sorted(self._classes.items()))

    def get(self, name: str) -> type:
        """The class registered as `name`; KeyError with a did-you-mean message otherwise."""
        known = self.all()
        if name not in known:
            raise KeyError(unknown_name(self.kind, str(name), known))
        return known[name]

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        folder = Path(importlib.import_module(self.package).__file__).parent
        for module in sorted(pkgutil.iter_modules([str(folder)]), key=lambda m: m.name):
            importlib.import_module(f"{self.package}.{module.name}")


class KnobsReadThrough:
    """Mixin for a (registered name, config) spec: the config's knobs read as attributes (`run.method.taps`)."""

    config: object

    def __getattr__(self, knob: str):
        if knob == "config" or knob.startswith("__"):
            raise AttributeError(knob)
        return getattr(self.config, knob)


def load_plugins(paths) -> None:
    """Import each plug-in file (a method or dataset of the user's own) once per process."""
    for path in paths:
        path = str(Path(path).expanduser().resolve())
        name = f"kdsweep_plugin_{abs(hash(path)):x}"
        if name in sys.modules:
            continue
        if not Path(path).is_file():
            raise UserError(f"plug-in {path} does not exist; `plugins` lists Python files that register methods "
                            f"or datasets.")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise UserError(f"plug-in {path} failed to import: {type(err).__name__}: {err}") from err
