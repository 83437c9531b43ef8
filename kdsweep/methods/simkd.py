"""SimKD and its ablations: projectors on tap pairs, a feature loss, an optional gate, the reused teacher classifier.

Trainable: the student backbone and one projector per tap pair. Frozen and not part of this module's state: the
teacher, including the classifier that turns the last projector's pooled output into logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.methods.base import LossOutput, Method
from kdsweep.methods.config import MethodConfig, warn_if_replication_only
from kdsweep.methods.gate import reduce_gated, teacher_correct_mask
from kdsweep.methods.losses import kl_logits_per_sample, kl_raw_per_sample, l2_per_sample, spatial_kl_per_sample
from kdsweep.methods.projector import Projector
from kdsweep.methods.taps import FeatureRef, TapPair, plan_taps
from kdsweep.methods.teacher_targets import TargetKey, TeacherNeeds, TeacherTargets
from kdsweep.models import FeatureModel, Intermediates


class SimKD(Method):
    def __init__(self, config: MethodConfig, student: FeatureModel, teacher: FeatureModel):
        super().__init__(config)
        warn_if_replication_only([self.config])
        self.pairs: list[TapPair] = plan_taps(self.config, student.feature_info, teacher.feature_info)
        self.projectors = nn.ModuleList(
            Projector(p.student_channels, p.teacher_channels, self.config.factor) for p in self.pairs
        )
        # A plain attribute, not a submodule: the teacher's classifier must stay out of this module's parameters,
        # optimizer and state_dict (it is frozen and saved with the teacher).
        object.__setattr__(self, "teacher_classifier", teacher.classifier_layer)

    def _uses_logit_loss(self, pair: TapPair) -> bool:
        """Principled KL compares the classifier-feeding pair through the teacher classifier's logits."""
        return self.config.loss == "kl" and pair.feeds_classifier

    def teacher_needs(self) -> TeacherNeeds:
        c = self.config
        features = frozenset(TargetKey(p.teacher, p.size) for p in self.pairs if not self._uses_logit_loss(p))
        logits = c.gate == "teacher_correct" or c.loss == "kl" or c.kd_weight > 0
        return TeacherNeeds(features, logits)

    @property
    def needs_student_blocks(self) -> bool:
        return any(p.student.level == "block" for p in self.pairs)

    def losses(self, student: Intermediates, targets: TeacherTargets, labels: torch.Tensor) -> LossOutput:
        c = self.config
        mask = teacher_correct_mask(targets.logits, labels) if c.gate == "teacher_correct" else None
        feature_loss = 0.0
        for pair, projector in zip(self.pairs, self.projectors):
            projected = projector(_feature(student, pair.student), pair.size)
            per_sample = self._pair_loss(pair, projected, targets)
            feature_loss = feature_loss + pair.weight * reduce_gated(per_sample, mask, c.gate_normalise)
        parts = {"feat": c.feature_weight * feature_loss}
        parts.update(self.auxiliary_losses(student, targets, labels))
        return LossOutput(parts, None if mask is None else mask.sum())

    def _pair_loss(self, pair: TapPair, projected: torch.Tensor, targets: TeacherTargets) -> torch.Tensor:
        c = self.config
        if self._uses_logit_loss(pair):
            return kl_logits_per_sample(self._classify(projected), targets.logits, c.temperature)
        target = targets.features[TargetKey(pair.teacher, pair.size)]
        if c.loss == "l2":
            return l2_per_sample(projected, target)
        if c.loss == "kl":
            return spatial_kl_per_sample(projected, target, c.temperature)
        return kl_raw_per_sample(projected, target)

    def _classify(self, projected: torch.Tensor) -> torch.Tensor:
        """Projector output -> global average pool -> the frozen teacher classifier."""
        return self.teacher_classifier(F.adaptive_avg_pool2d(projected, 1).flatten(1))

    def predict(self, student: Intermediates) -> torch.Tensor:
        if self.config.eval_head == "student":
            return student.logits
        pair, projector = self.pairs[-1], self.projectors[-1]
        return self._classify(projector(_feature(student, pair.student), pair.size))


def _feature(out: Intermediates, ref: FeatureRef) -> torch.Tensor:
    return (out.stages if ref.level == "stage" else out.blocks)[ref.index]
