"""Distillation methods, one file each, found by name in the registry (`registry.py`):

  simkd    SimKD with the seed study's ablation knobs        kd       Hinton KD on the logits
  dkd      Decoupled KD (target / non-target KL, warm-up)    fitnet   FitNets hint on one stage
  vanilla  cross-entropy only (no teacher)

`kdsweep methods` lists them with their knobs; docs/extending.md shows how to add one.
"""

from __future__ import annotations

from kdsweep.methods.base import LossOutput, Method, StepContext
from kdsweep.methods.registry import (
    MethodSpec,
    build_method,
    load_plugins,
    method_class,
    method_problems,
    methods,
    parse_method,
    register_method,
)
from kdsweep.methods.teacher_targets import TargetKey, TeacherNeeds, TeacherTargets, compute_teacher_targets

__all__ = [
    "LossOutput", "Method", "MethodSpec", "StepContext", "TargetKey", "TeacherNeeds", "TeacherTargets",
    "build_method", "compute_teacher_targets", "load_plugins", "method_class", "method_problems", "methods",
    "parse_method", "register_method",
]
