"""`vanilla`: the student alone with cross-entropy on the labels - the no-distillation row, and how kdsweep trains
a teacher inside an experiment."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdsweep.methods.base import LossOutput, Method, StepContext
from kdsweep.methods.head import head_losses
from kdsweep.methods.registry import register_method
from kdsweep.methods.teacher_targets import TeacherTargets
from kdsweep.models import Intermediates


@dataclass(frozen=True)
class VanillaConfig:
    """No knobs: the recipe (lr, schedule, weight decay) is all there is."""


@register_method("vanilla")
class Vanilla(Method):
    Config = VanillaConfig
    summary = "cross-entropy only, no teacher (the lower bound; also trains teachers)"
    needs_teacher = False
    loss_display = {"vanilla": "cross-entropy"}

    def losses(self, student: Intermediates, targets: TeacherTargets, labels: torch.Tensor,
               context: StepContext) -> LossOutput:
        return LossOutput(head_losses(student.logits, labels, targets, 1.0, 0.0, 1.0))
