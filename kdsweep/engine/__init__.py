"""The training engine: student groups, checkpoints, progress records. Imports neither Ray nor pydantic."""

from kdsweep.engine.group import EpochReport, run_group
from kdsweep.engine.recipe import Recipe
from kdsweep.engine.records import FINAL_STATUSES, RunRecord
from kdsweep.engine.specs import GroupSpec, RunSpec, TeacherSpec

__all__ = ["EpochReport", "FINAL_STATUSES", "GroupSpec", "Recipe", "RunRecord", "RunSpec", "TeacherSpec", "run_group"]
