"""What every method owns: its trainable extras, its named losses and its prediction path.

The training loop knows nothing about methods (after mdistiller's `_base.py`): it runs the student, hands the
student's intermediates and the teacher targets to `losses`, sums the returned parts, and scores test accuracy
through `predict`. Evaluating the bare student instead of `predict` is the classic SimKD mistake: a SimKD student's
own classifier is never trained.

The auxiliary terms on the student's own head live here because every method may use them:
  ce  ce_weight * cross-entropy with the labels
  kd  kd_weight * T^2 KL(teacher || student) on the logits (Hinton KD, T = kd_temperature)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdsweep.methods.config import MethodConfig
from kdsweep.methods.losses import cross_entropy_per_sample, kl_logits_per_sample
from kdsweep.methods.teacher_targets import TeacherNeeds, TeacherTargets
from kdsweep.models import Intermediates


@dataclass
class LossOutput:
    parts: dict[str, torch.Tensor]  # weighted terms, e.g. {"feat": ..., "ce": ...}; the loss is their sum
    kept: torch.Tensor | None = None  # samples the gate kept in this batch (a 0-d tensor); None without a gate


class Method(nn.Module):
    def __init__(self, config: MethodConfig):
        super().__init__()
        self.config = config.resolved()

    # What the group must compute before calling `losses`.
    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(logits=self.config.kd_weight > 0)

    @property
    def needs_student_blocks(self) -> bool:
        return False

    @property
    def needs_student_head(self) -> bool:
        c = self.config
        return c.ce_weight > 0 or c.kd_weight > 0 or c.eval_head == "student"

    def losses(self, student: Intermediates, targets: TeacherTargets, labels: torch.Tensor) -> LossOutput:
        return LossOutput(self.auxiliary_losses(student, targets, labels))

    def auxiliary_losses(self, student: Intermediates, targets: TeacherTargets, labels: torch.Tensor) -> dict:
        c = self.config
        parts = {}
        if c.ce_weight > 0:
            parts["ce"] = c.ce_weight * cross_entropy_per_sample(student.logits, labels).mean()
        if c.kd_weight > 0:
            kd = kl_logits_per_sample(student.logits, targets.logits, c.kd_temperature)
            parts["kd"] = c.kd_weight * kd.mean()
        return parts

    def predict(self, student: Intermediates) -> torch.Tensor:
        """Logits used for test accuracy."""
        return student.logits


class PlainMethod(Method):
    """`vanilla` (cross-entropy only: also how teachers are trained) and `kd` (Hinton KD): the context rows."""
