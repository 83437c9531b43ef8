"""Plain, JSON-round-trippable descriptions of the work: one student run, a teacher, a student group.

These are what cross process boundaries (a Ray trial's config, `kdsweep train`'s flags); the engine needs nothing
else, and in particular neither Ray nor pydantic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kdsweep.data import DataSpec
from kdsweep.engine.recipe import Recipe
from kdsweep.methods import MethodSpec, load_plugins


@dataclass(frozen=True)
class RunSpec:
    """One student trained with one method config, lr and seed."""

    run_id: str
    student_arch: str
    method: MethodSpec  # the method's name and config (kdsweep/methods/registry.py)
    lr: float
    seed: int
    recipe: Recipe
    labels: dict = field(default_factory=dict)  # display/bookkeeping only: variant, title, cell_id, ...

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id, "student_arch": self.student_arch, "method": self.method.as_record(),
            "lr": self.lr, "seed": self.seed, "recipe": self.recipe.as_record(), "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(
            run_id=d["run_id"], student_arch=d["student_arch"], method=MethodSpec.from_record(d["method"]),
            lr=float(d["lr"]), seed=int(d["seed"]), recipe=Recipe.from_record(d["recipe"]),
            labels=dict(d.get("labels", {})),
        )


@dataclass(frozen=True)
class TeacherSpec:
    arch: str
    checkpoint: str  # absolute path or URI of a RepDistiller/SimKD-style checkpoint or a bare state_dict
    expected_accuracy: float | None = None  # warn when the measured test accuracy is far below this


@dataclass(frozen=True)
class GroupSpec:
    """K >= 1 students that share one process, one data stream (the seed) and one frozen teacher."""

    group_id: str
    seed: int
    data: DataSpec
    teacher: TeacherSpec | None
    runs: tuple[RunSpec, ...]
    storage: str  # experiment root: absolute path or URI
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads on CPU; None leaves torch's default
    teacher_cache: str = "auto"  # auto | on | off: the exact teacher cache (engine/teacher_source.py)
    # The share of its GPU this group's trial holds (resources.gpu, e.g. 0.5); bounds the cache's memory budget
    # on CUDA, since trials packed on one card may build their caches at the same moment. None: the whole card.
    gpu_share: float | None = None
    # Speed switches (engine/fastpath.py): `auto` is on for CUDA, off on the CPU (its exact path).
    precision: str = "auto"  # auto | bf16 | fp32
    channels_last: str = "auto"  # auto | on | off
    compile: str = "auto"  # auto | on | off: torch.compile of the student step
    fuse_students: str = "off"  # auto | on | off: vmap fusion of same-structure students (engine/fused.py)
    save_final: bool = True  # keep final student + projector + teacher-classifier weights per run
    plugins: tuple[str, ...] = ()  # absolute paths of the space's plug-in files, imported before anything is built

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("runs", "data", "teacher")}
        d["data"] = self.data.as_record()
        d["teacher"] = asdict(self.teacher) if self.teacher else None
        d["runs"] = [r.to_dict() for r in self.runs]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GroupSpec:
        values = dict(d)
        values["plugins"] = tuple(d.get("plugins", ()))
        load_plugins(values["plugins"])  # a run's method or the dataset may be a plug-in's
        values["data"] = DataSpec.from_record(d["data"])
        values["teacher"] = TeacherSpec(**d["teacher"]) if d.get("teacher") else None
        values["runs"] = tuple(RunSpec.from_dict(r) for r in d["runs"])
        return cls(**values)
