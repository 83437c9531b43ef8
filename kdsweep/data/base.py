"""What a dataset is to kdsweep: a registered class with a typed config, its images' geometry, and a loader.

A dataset is one file in `kdsweep/data/` (or a plug-in file) that subclasses `Dataset`, declares its `Config`
(typed_config.py) and decorates the class with `@register_dataset("name")` (data/registry.py). Every split is held
in memory as uint8 (N, C, S, S) tensors and augmented on the device (augment.py), so a loader only has to produce
those tensors once; `geometry` must be known from the config alone, before any file is read, because validation,
the dry run, the cost estimate and the models' spatial sizes need it before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kdsweep import typed_config
from kdsweep.data.geometry import Geometry
from kdsweep.typed_config import knob


@dataclass(frozen=True)
class Subsets:
    """Knobs every dataset has: keep only the first N images of a split (quick runs, tests)."""

    train_subset: int | None = knob(None, ge=1, doc="keep only the first N training images")
    test_subset: int | None = knob(None, ge=1, doc="keep only the first N test images")


@dataclass(frozen=True)
class Sizes:
    """A dataset's size before subsets: what the dry run and the teacher check need before loading."""

    num_classes: int
    train_images: int
    test_images: int


@dataclass
class Splits:
    """What `Dataset.load` returns, on the CPU."""

    train_images: object  # torch uint8 (N, C, S, S)
    train_labels: object  # torch int64 (N,), in [0, len(class_names))
    test_images: object  # torch uint8 (M, C, S, S)
    test_labels: object  # torch int64 (M,)
    class_names: tuple[str, ...]


class Dataset:
    """Subclass, set `Config` and `summary`, implement `geometry` and `load` (and `sizes`/`prepare` when the files
    come from disk), then register the class. All methods are classmethods: a dataset has no state of its own."""

    name: ClassVar[str]  # set by @register_dataset
    Config: ClassVar[type] = Subsets
    summary: ClassVar[str] = ""
    # Knobs that say where the files are and how to get them (`root`, `download`), never which images they hold:
    # left out of run ids (an experiment resumes with its data mounted elsewhere). `paths` are resolved against
    # the working directory `kdsweep run` starts in (space/loading.py: `base`).
    paths: ClassVar[tuple[str, ...]] = ()
    not_identity: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def geometry(cls, config) -> Geometry:
        raise NotImplementedError

    @classmethod
    def load(cls, config) -> Splits:
        raise NotImplementedError

    @classmethod
    def sizes(cls, config) -> Sizes | None:
        """The sizes before subsets, from the config or a cheap look at the files; None when unknown yet (files
        not downloaded)."""
        return None

    @classmethod
    def prepare(cls, config, announce=print) -> None:
        """Make the files present (download them when the config allows) or raise a UserError saying how to get
        them. Called once by the driver before any trial starts, and by `load`'s callers on a single machine."""

    @classmethod
    def config_problems(cls, config) -> list[tuple[str, str]]:
        """(knob, what is wrong) for problems beyond single knobs' bounds, e.g. a required root."""
        return []

    @classmethod
    def identity(cls, config) -> dict:
        """What fixes the images a run sees: every knob but the `not_identity` ones (hashed into run ids)."""
        record = typed_config.as_record(config)
        return {k: v for k, v in record.items() if k not in cls.not_identity}
