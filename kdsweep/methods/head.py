"""The terms on the student's own classifier head that several methods add (SimKD's ablations, KD, FitNet):

  ce  ce_weight * cross-entropy with the labels
  kd  kd_weight * T^2 KL(teacher || student) on the logits (Hinton KD, T = the method's KD temperature)
"""

from __future__ import annotations

import torch

from kdsweep.methods.losses import cross_entropy_per_sample, kl_logits_per_sample
from kdsweep.methods.teacher_targets import TeacherTargets


def head_losses(logits: torch.Tensor, labels: torch.Tensor, targets: TeacherTargets, ce_weight: float,
                kd_weight: float, temperature: float) -> dict[str, torch.Tensor]:
    """{"ce": ..., "kd": ...}, each only when its weight is > 0, in that order (the loss sums them in order)."""
    parts = {}
    if ce_weight > 0:
        parts["ce"] = ce_weight * cross_entropy_per_sample(logits, labels).mean()
    if kd_weight > 0:
        parts["kd"] = kd_weight * kl_logits_per_sample(logits, targets.logits, temperature).mean()
    return parts
