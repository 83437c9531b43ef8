"""What a method needs from the frozen teacher for one batch, and computing it once for a whole student group.

Students of a group that share a batch also share one teacher forward: the group asks every student's method for
its `TeacherNeeds`, takes the union, and computes `TeacherTargets` once. The same targets are what the exact
teacher cache stores per (image, view).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kdsweep.methods.projector import pool_to
from kdsweep.methods.taps import FeatureRef
from kdsweep.models import FeatureModel


@dataclass(frozen=True, order=True)
class TargetKey:
    """A teacher map, pooled to `size` x `size` (the aligned size of a tap pair)."""

    ref: FeatureRef
    size: int


@dataclass(frozen=True)
class TeacherNeeds:
    features: frozenset[TargetKey] = frozenset()
    logits: bool = False

    def __or__(self, other: TeacherNeeds) -> TeacherNeeds:
        return TeacherNeeds(self.features | other.features, self.logits or other.logits)

    @property
    def any(self) -> bool:
        return bool(self.features) or self.logits

    @property
    def blocks(self) -> bool:
        return any(key.ref.level == "block" for key in self.features)


@dataclass
class TeacherTargets:
    features: dict[TargetKey, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


@torch.no_grad()
def compute_teacher_targets(teacher: FeatureModel | None, images: torch.Tensor, needs: TeacherNeeds) -> TeacherTargets:
    """One teacher forward (eval mode, no autograd) giving every pooled map and the logits in `needs`."""
    if not needs.any:
        return TeacherTargets()
    out = teacher.forward_intermediates(images, blocks=needs.blocks, head=needs.logits)
    features = {}
    for key in sorted(needs.features):
        maps = out.stages if key.ref.level == "stage" else out.blocks
        features[key] = pool_to(maps[key.ref.index], key.size)
    return TeacherTargets(features, out.logits)
