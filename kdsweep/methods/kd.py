"""`kd`: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015), on the logits.

    loss = ce_weight * CE(student, y) + kd_weight * T^2 KL(softmax(t / T) || softmax(s / T))

The defaults are RepDistiller's CIFAR-100 KD row (`-r 0.1 -a 0.9`, T = 4), the row SimKD's paper compares with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdsweep.methods.base import LossOutput, Method, StepContext
from kdsweep.methods.head import head_losses
from kdsweep.methods.registry import register_method
from kdsweep.methods.teacher_targets import TeacherNeeds, TeacherTargets
from kdsweep.models import Intermediates
from kdsweep.typed_config import knob


@dataclass(frozen=True)
class KDConfig:
    ce_weight: float = knob(0.1, ge=0, doc="cross-entropy with the labels")
    kd_weight: float = knob(0.9, ge=0, doc="KL to the teacher's softened logits")
    temperature: float = knob(4.0, gt=0, doc="softmax temperature T; the KL is scaled by T^2")


@register_method("kd")
class KD(Method):
    Config = KDConfig
    summary = "Hinton KD on the logits (RepDistiller's CIFAR defaults)"
    loss_display = {"kd": "KD (logits)"}

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(logits=self.config.kd_weight > 0)

    def losses(self, student: Intermediates, targets: TeacherTargets, labels: torch.Tensor,
               context: StepContext) -> LossOutput:
        c = self.config
        return LossOutput(head_losses(student.logits, labels, targets, c.ce_weight, c.kd_weight, c.temperature))
