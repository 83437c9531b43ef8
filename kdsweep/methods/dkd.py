"""`dkd`: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), on the logits.

With p = softmax(z / T) and y the label, Eq. (1)-(7) of the paper split Hinton's KL into

    TCKD = KL(b_t || b_s),         b = [p_y, 1 - p_y]                      (target vs the rest)
    NCKD = KL(p~_t || p~_s),       p~_i = p_i / (1 - p_y) for i != y       (among the non-target classes)
    loss = ce_weight * CE + w(epoch) * (alpha * TCKD + beta * NCKD) * T^2

and weight them independently. w is the authors' linear warm-up: w = min(e / warmup_epochs, 1) at 1-based epoch
e (mdistiller's `DKD.forward_train`), so epoch 1 of 20 trains with 1/20 of the distillation loss. The defaults are
the authors' CIFAR-100 ones: alpha 1, beta 8, T 4, 20 warm-up epochs, CE weight 1.

Both terms are computed from log-probabilities (log-sum-exp), never as log of a softmax, so a confident teacher
or student cannot turn them into inf or nan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdsweep.methods.base import LossOutput, Method, StepContext
from kdsweep.methods.losses import cross_entropy_per_sample
from kdsweep.methods.registry import register_method
from kdsweep.methods.teacher_targets import TeacherNeeds, TeacherTargets
from kdsweep.models import Intermediates
from kdsweep.typed_config import knob


@dataclass(frozen=True)
class DKDConfig:
    alpha: float = knob(1.0, ge=0, doc="weight of the target-class term TCKD")
    beta: float = knob(8.0, ge=0, doc="weight of the non-target-class term NCKD")
    temperature: float = knob(4.0, gt=0, doc="softmax temperature T; both terms are scaled by T^2")
    warmup_epochs: int = knob(20, ge=0, doc="linear warm-up of the DKD terms over the first epochs (0: none)")
    ce_weight: float = knob(1.0, ge=0, doc="cross-entropy with the labels")


def dkd_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) per sample, each already scaled by T^2, unweighted."""
    target = F.one_hot(labels, student_logits.shape[1]).bool()
    log_b_s, log_nt_s = _decoupled_log_probs(student_logits / temperature, target)
    log_b_t, log_nt_t = _decoupled_log_probs(teacher_logits / temperature, target)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(dim=1)
    p_nt_t = log_nt_t.exp()  # exactly 0 at the target class
    nckd = (p_nt_t * (log_nt_t - log_nt_s)).masked_fill(target, 0.0).sum(dim=1)
    return tckd * temperature ** 2, nckd * temperature ** 2


def _decoupled_log_probs(z: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log [p_y, 1 - p_y] (B, 2) and log p~ over the non-target classes (B, C; -inf at the target)."""
    log_all = torch.logsumexp(z, dim=1, keepdim=True)
    non_target = z.masked_fill(target, float("-inf"))
    log_rest = torch.logsumexp(non_target, dim=1, keepdim=True)
    log_y = (z * target).sum(dim=1, keepdim=True)
    binary = torch.cat([log_y - log_all, log_rest - log_all], dim=1)
    return binary, non_target - log_rest


@register_method("dkd")
class DKD(Method):
    Config = DKDConfig
    summary = "Decoupled KD (CVPR 2022): target and non-target KL weighted apart, with a linear warm-up"
    loss_display = {"dkd": "DKD (logits)"}

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(logits=True)

    def warmup(self, context: StepContext) -> float:
        w = self.config.warmup_epochs
        return 1.0 if w == 0 else min((context.epoch + 1) / w, 1.0)

    def schedule(self, context: StepContext) -> dict[str, float]:
        return {"warmup": self.warmup(context)}

    def losses(self, student: Intermediates, targets: TeacherTargets, labels: torch.Tensor,
               context: StepContext) -> LossOutput:
        c = self.config
        tckd, nckd = dkd_per_sample(student.logits, targets.logits, labels, c.temperature)
        scale = context.schedule["warmup"] if "warmup" in context.schedule else self.warmup(context)
        parts = {
            "ce": c.ce_weight * cross_entropy_per_sample(student.logits, labels).mean(),
            "tckd": scale * c.alpha * tckd.mean(),
            "nckd": scale * c.beta * nckd.mean(),
        }
        return LossOutput(parts)
