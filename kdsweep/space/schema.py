"""The search-space file format, validated strictly (pydantic, `extra="forbid"`, no type coercion).

Structure checks live here; checks that need several sections at once (a baseline variant that must exist, rules
that must match axes, model names) live in `checks.py`, and both report every problem of a file at once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from kdsweep.engine.recipe import MAX_SEED
from kdsweep.errors import unknown_name

from kdsweep.models import list_models
from kdsweep.storage import location_problem
from kdsweep.typed_config import float32_problem

PositiveInt = Annotated[int, Field(gt=0)]


def _within_float32(value: float) -> float:
    if problem := float32_problem(value):
        raise ValueError(problem)
    return value


PositiveFloat = Annotated[float, Field(gt=0), AfterValidator(_within_float32)]
NonNegativeFloat = Annotated[float, Field(ge=0), AfterValidator(_within_float32)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=80)]
# Knob values: typed_config checks them against the knob (a non-finite float included), with a clearer message.
Scalar = int | Annotated[float, Field(allow_inf_nan=True)] | str | bool
# YAML 1.1 reads a bare on/off as a boolean; accept it for on/off switches.
OnOffAuto = Annotated[
    Literal["auto", "on", "off"],
    BeforeValidator(lambda v: {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # no inf/nan number anywhere


# A method section: `kind` (a registered method, default simkd) and any of that method's knobs. Its keys and values
# are validated against the method's own typed config (kdsweep/methods/, `kdsweep methods`) in checks.py, which
# knows which method each section belongs to.
MethodSection = dict[str, Scalar | list[Scalar] | None]


# `recipe` and `teacher.train` are checked against the engine's typed configs (kdsweep/engine/recipe.py: Recipe,
# TeacherRecipe) in checks.py: one class for the space, `kdsweep train` and the engine.
RecipeSection = dict[str, Scalar | list[Scalar] | None]


def _known_model(name: str) -> str:
    if name not in list_models():
        raise ValueError(unknown_name("model", name, list_models()))
    return name


def _supported_location(location: str | None) -> str | None:
    problem = location and location_problem(location)
    if problem:
        raise ValueError(problem)
    return location


class TeacherSection(Strict):
    arch: str
    checkpoint: str | None = None  # path (relative to the working directory) or URI
    train: RecipeSection | None = None  # kdsweep trains the teacher: a TeacherRecipe (recipe + lr, seed)
    expected_accuracy: Annotated[float, Field(ge=0, le=100)] | None = None
    display_name: str | None = None

    _arch = field_validator("arch")(_known_model)

    _checkpoint = field_validator("checkpoint")(_supported_location)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.checkpoint is None) == (self.train is None):
            raise ValueError("give exactly one of `checkpoint` (a file to load) or `train` (kdsweep trains it)")
        return self


class StudentSection(Strict):
    arch: str
    display_name: str | None = None

    _arch = field_validator("arch")(_known_model)


# The dataset section is {name: <registered dataset>, **its knobs}; kdsweep/data/registry.py checks it against that
# dataset's own typed config (space/checks.py), as variants' method sections are checked against their method's.
DatasetSection = dict[str, Scalar | list[Scalar] | None]


class VariantSection(Strict):
    title: Annotated[str, Field(min_length=1)]
    method: MethodSection = {}


class Axes(BaseModel):
    """The grid: lr and seed are required; any knob of the variants' methods may be an axis too, e.g. SimKD's
    `loss` (validated in checks.py against each variant's method)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    loss: Annotated[list[Scalar], Field(min_length=1)] | None = None
    lr: Annotated[list[PositiveFloat], Field(min_length=1)]
    seed: Annotated[list[Annotated[int, Field(ge=0, le=MAX_SEED)]], Field(min_length=1)]

    def knob_axes(self) -> dict[str, list]:
        """The axes beyond loss, lr and seed."""
        return dict(self.model_extra or {})

    def method_axes(self) -> dict[str, list]:
        """Every axis that sets a method knob, `loss` first when given (the order run ids are built in)."""
        return {**({"loss": self.loss} if self.loss is not None else {}), **self.knob_axes()}


class OverrideRule(Strict):
    """Set knobs on the cells that match `when` (e.g. the authors' KL rows: CE + KD on the student head)."""

    when: dict[str, Scalar | list[Scalar]]
    set: MethodSection


class BaselineSection(Strict):
    label: str = "SimKD"
    accuracy: Annotated[float, Field(ge=0, le=100)] | None = None  # the configured number, e.g. 75.43
    variant: str | None = None  # the in-sweep baseline variant
    tolerance: NonNegativeFloat = 0.05  # accuracy points within which a row is "on-par"


class GroupSection(Strict):
    by: Literal["seed"] = "seed"
    max_students: Annotated[int, Field(gt=0, le=1024)] = 8  # students per group (one process), a typo guard


class ResourcesSection(Strict):
    cpu: PositiveFloat = 1.0
    gpu: NonNegativeFloat = 0.0


class ExecutionSection(Strict):
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    teacher_cache: OnOffAuto = "auto"
    # Speed switches (kdsweep/engine/fastpath.py); auto = on for CUDA, off on the CPU (the bitwise-exact path).
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: OnOffAuto = "auto"
    compile: OnOffAuto = "auto"
    fuse_students: OnOffAuto = "off"  # vmap fusion of same-structure students: opt-in until measured on a GPU
    max_failures: Annotated[int, Field(ge=0)] = 2  # Ray re-runs a crashed trial from its checkpoints this often
    save_final: bool = True
    # torch CPU threads per trial; default: the trial's cpu resources
    threads: Annotated[int, Field(gt=0, le=1024)] | None = None


class ReportSection(Strict):
    select: Literal["best", "last"] = "best"
    loss_names: dict[str, str] = {}


class SpaceFile(Strict):
    experiment: Name
    description: str = ""
    teacher: TeacherSection
    student: StudentSection
    dataset: DatasetSection
    recipe: RecipeSection = {}
    variants: Annotated[dict[Name, VariantSection], Field(min_length=1)]
    axes: Axes
    include: list[dict[str, Scalar | list[Scalar]]] = []
    exclude: list[dict[str, Scalar | list[Scalar]]] = []
    overrides: list[OverrideRule] = []
    baseline: BaselineSection = BaselineSection()
    group: GroupSection = GroupSection()
    resources: ResourcesSection = ResourcesSection()
    plugins: list[str] = []  # Python files that register methods of your own (paths relative to the working dir)
    storage: str = "results"  # experiments live in <storage>/<experiment>; a path or s3:// gs:// URI
    execution: ExecutionSection = ExecutionSection()
    report: ReportSection = ReportSection()

    _storage = field_validator("storage")(_supported_location)
