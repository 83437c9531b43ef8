"""The dataset registry (kdsweep/registry.py) and `DataSpec`, a run's dataset: its registered name and its config.

A DataSpec crosses processes as one flat record, {"name": name, **knobs}; run ids hash `identity()`, which leaves
out where the files are (data/base.py: `Dataset.not_identity`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from kdsweep import typed_config
from kdsweep.data.geometry import Geometry
from kdsweep.registry import KnobsReadThrough, Registry

_DATASETS = Registry("dataset", "kdsweep.data")
register_dataset = _DATASETS.register  # class decorator: @register_dataset("cifar10")


def datasets() -> dict[str, type]:
    """Every registered dataset by name, in name order."""
    return _DATASETS.all()


def dataset_class(name: str) -> type:
    return _DATASETS.get(name)


@dataclass(frozen=True)
class DataSpec(KnobsReadThrough):
    """A run's dataset: its registered name and its config; knobs read through (`spec.root`)."""

    name: str
    config: object  # the dataset's Config instance

    @property
    def dataset(self) -> type:
        return dataset_class(self.name)

    @property
    def geometry(self) -> Geometry:
        return self.dataset.geometry(self.config)

    def identity(self) -> dict:
        return {"name": self.name, **self.dataset.identity(self.config)}

    def as_record(self) -> dict:
        return {"name": self.name, **typed_config.as_record(self.config)}

    def with_knobs(self, **changes) -> DataSpec:
        """The same dataset with some knobs changed (valid values, as the config's own types)."""
        return DataSpec(self.name, dataclasses.replace(self.config, **changes))

    @classmethod
    def from_record(cls, record: dict) -> DataSpec:
        name = record["name"]
        return cls(name, typed_config.from_record(dataset_class(name).Config, record))


def dataset_problems(values, path: str = "dataset") -> list[tuple[str, str]]:
    """Every problem of `values` ({"name": ..., knob: value}) as the dataset section at key path `path`."""
    if not isinstance(values, dict):
        return [(path, f"expected a mapping with `name` and the dataset's knobs, got {values!r}")]
    if "name" not in values:
        return [(f"{path}.name", f"required: one of {', '.join(datasets())}")]
    try:
        cls = dataset_class(values["name"])
    except KeyError as err:
        return [(f"{path}.name", err.args[0])]
    knobs = {k: v for k, v in values.items() if k != "name"}
    found = typed_config.problems(cls.Config, knobs, path, owner=f"dataset {values['name']}")
    if found:
        return found
    config = typed_config.build(cls.Config, knobs)
    return [(f"{path}.{knob}", message) for knob, message in cls.config_problems(config)]


def parse_dataset(values: dict, base: Path | None = None) -> DataSpec:
    """A DataSpec from valid `values`, its path knobs made absolute against `base` (the space file's folder);
    raises ValueError listing the problems otherwise."""
    from kdsweep.storage import absolute_location

    found = dataset_problems(values, "dataset")
    if found:
        raise ValueError("; ".join(f"{p}: {m}" for p, m in found))
    cls = dataset_class(values["name"])
    knobs = {k: v for k, v in values.items() if k != "name"}
    for knob in cls.paths:
        if knobs.get(knob) is not None:
            knobs[knob] = absolute_location(knobs[knob], base or Path.cwd())
    return DataSpec(values["name"], typed_config.build(cls.Config, knobs))
