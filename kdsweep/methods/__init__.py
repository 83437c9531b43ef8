"""Distillation methods: SimKD with its ablation knobs, and plain CE / Hinton-KD context rows."""

from __future__ import annotations

from kdsweep.methods.base import LossOutput, Method, PlainMethod
from kdsweep.methods.config import KNOBS, MethodConfig
from kdsweep.methods.simkd import SimKD
from kdsweep.methods.teacher_targets import TargetKey, TeacherNeeds, TeacherTargets, compute_teacher_targets
from kdsweep.models import FeatureModel


def build_method(config: MethodConfig, student: FeatureModel, teacher: FeatureModel | None) -> Method:
    """The method object for `config`; `teacher` may be None only for `vanilla`."""
    problems = config.problems()
    if problems:
        raise ValueError("; ".join(f"{knob}: expected {what}" for knob, what in problems))
    if config.kind == "vanilla":
        return PlainMethod(config)
    if teacher is None:
        raise ValueError(f"method '{config.kind}' needs a teacher")
    if config.kind == "kd":
        return PlainMethod(config)
    return SimKD(config, student, teacher)


__all__ = [
    "KNOBS", "LossOutput", "Method", "MethodConfig", "PlainMethod", "SimKD", "TargetKey", "TeacherNeeds",
    "TeacherTargets", "build_method", "compute_teacher_targets",
]
