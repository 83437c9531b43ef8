"""The teacher-correct gate: learn from a sample only if the teacher classifies that augmented image correctly."""

from __future__ import annotations

import torch


def teacher_correct_mask(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 for samples whose teacher argmax equals the label, else 0.0 (float, shape (B,))."""
    return (teacher_logits.argmax(dim=1) == labels).to(teacher_logits.dtype)


def reduce_gated(per_sample: torch.Tensor, mask: torch.Tensor | None, normalise: str) -> torch.Tensor:
    """Batch loss from per-sample losses.

    kept: average over the kept samples (0 when none is kept) - the loss scale does not shrink with the gate.
    all:  divide by the whole batch - what zeroing the masked samples' features and taking the mean does, as the
          seed report's authors did.
    No host synchronisation: the kept count stays a tensor.
    """
    if mask is None:
        return per_sample.mean()
    total = (per_sample * mask).sum()
    if normalise == "kept":
        return total / mask.sum().clamp_min(1.0)
    if normalise == "all":
        return total / per_sample.numel()
    raise ValueError(f"unknown gate normalisation '{normalise}'")
