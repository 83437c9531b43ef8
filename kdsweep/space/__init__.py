"""Search spaces: the YAML format, its validation, and expansion into student runs."""

from kdsweep.space.expand import Space, TeacherPlan
from kdsweep.space.loading import SpaceError, load_space

__all__ = ["Space", "SpaceError", "TeacherPlan", "load_space"]
