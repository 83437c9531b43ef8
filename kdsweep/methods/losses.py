"""Feature and logit losses, each returned per sample (shape (B,)) so that a gate can drop samples before reducing.

Reducing with a plain mean gives the usual batch losses exactly as the references define them:
  l2              F.mse_loss(s, t)                       (mean over every element)
  kl_logits       T^2 * F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean")   (Hinton KD)
  kl_raw          F.kl_div(s, t, reduction="batchmean")   on raw feature maps (the seed authors' "KL")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_per_sample(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error over each sample's C x H x W elements."""
    return (student - teacher).pow(2).flatten(1).mean(dim=1)


def kl_logits_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the classes of each sample."""
    return _kl_softmax(student_logits, teacher_logits, temperature, dim=1).mul(temperature ** 2)


def spatial_kl_per_sample(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Channel-wise spatial-softmax KL: each channel's H x W map is a distribution over positions.

    T^2 * KL(teacher || student) per (sample, channel), averaged over channels. A 1 x 1 map carries no spatial
    distribution, so its loss is exactly 0.
    """
    s = student.flatten(2)  # (B, C, H*W)
    t = teacher.flatten(2)
    return _kl_softmax(s, t, temperature, dim=2).mean(dim=1).mul(temperature ** 2)


def kl_raw_per_sample(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`KLDivLoss` applied literally to raw maps: sum of t * (log t - s), with 0 * log 0 = 0.

    Replication only: the student map is treated as log-probabilities although it is a post-ReLU activation, so the
    loss is unbounded below (the authors logged values near -1.6e6).
    """
    return (torch.xlogy(teacher, teacher) - teacher * student).flatten(1).sum(dim=1)


def cross_entropy_per_sample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def _kl_softmax(student: torch.Tensor, teacher: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    log_p_t = F.log_softmax(teacher / temperature, dim=dim)
    log_p_s = F.log_softmax(student / temperature, dim=dim)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=dim)
