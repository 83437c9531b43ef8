"""SimKD and its ablations: projectors on tap pairs, a feature loss, an optional gate, the reused teacher classifier.

Every variant of the seed report is a setting of these knobs (see `search_spaces/`), not a method of its own:

  SimKD                    taps=last
  Multiple projectors      taps=multi (last + previous stage, weights 2/3 : 1/3)
  All-layer projectors     taps=all_blocks (one projector per block pair, uniform weights)
  Teacher-correct labels   gate=teacher_correct
  the authors' KL rows     loss=kl_raw, ce_weight=1, kd_weight=1, eval_head=student

Trainable: the student backbone and one projector per tap pair. Frozen and not part of this module's state: the
teacher, including the classifier that turns the last projector's pooled output into logits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.methods.base import LossOutput, Method, StepContext
from kdsweep.methods.gate import reduce_gated, teacher_correct_mask
from kdsweep.methods.head import head_losses
from kdsweep.methods.losses import kl_logits_per_sample, kl_raw_per_sample, l2_per_sample, spatial_kl_per_sample
from kdsweep.methods.projector import Projector
from kdsweep.methods.registry import register_method
from kdsweep.methods.taps import TAPS, FeatureRef, TapPair, plan_taps
from kdsweep.methods.teacher_targets import TargetKey, TeacherNeeds, TeacherTargets
from kdsweep.models import FeatureModel, Intermediates
from kdsweep.typed_config import knob


# The field order is the stored record's (run ids hash the record, by key, so the order itself does not matter).
@dataclass(frozen=True)
class SimKDConfig:
    taps: str = knob("last", choices=TAPS, doc="which (student, teacher) map pairs get a projector")
    multi_weights: tuple[float, float] = knob((2 / 3, 1 / 3), ge=0, doc="multi: weights of (last, previous-stage) pair")
    pairing: str = knob("index", choices=("index", "relative_depth"),
                        doc="all_blocks: student block k + (n_s - n_t) <-> teacher block k, or by relative depth")
    last_weight: float | None = knob(None, ge=0, le=1, doc="all_blocks: weight of the classifier-feeding pair; "
                                                           "null = uniform 1/n")
    factor: int = knob(2, ge=1, doc="projector bottleneck: t_C -> t_C / factor")
    loss: str = knob("l2", choices=("l2", "kl", "kl_raw"), doc="feature loss on every pair")
    temperature: float = knob(4.0, gt=0, doc="kl: softmax temperature, loss scaled by T^2")
    feature_weight: float = knob(1.0, ge=0)
    gate: str = knob("none", choices=("none", "teacher_correct"),
                     doc="learn from a sample only if the teacher classifies it correctly")
    gate_normalise: str = knob("kept", choices=("kept", "all"),
                               doc="average the gated loss over kept samples, or over the batch (the authors' code)")
    ce_weight: float = knob(0.0, ge=0, doc="cross-entropy on the student's own head")
    kd_weight: float = knob(0.0, ge=0, doc="Hinton KD on the student's own head")
    kd_temperature: float = knob(4.0, gt=0)
    eval_head: str = knob("teacher_classifier", choices=("teacher_classifier", "student"),
                          doc="which head scores test accuracy")


KL_RAW_WARNING = (
    "loss 'kl_raw' is the seed report's KLDivLoss applied to raw feature maps, kept to replicate its KL rows: it is "
    "unbounded below (the authors logged losses near -1.6e6) and is not a divergence between distributions; use "
    "'kl' for the principled temperature-softmax KL"
)


def warn_if_replication_only(methods) -> None:
    """Warn once when any of `methods` (MethodSpecs) uses the replication-only raw-feature KL."""
    if any(m.kind == "simkd" and m.config.loss == "kl_raw" for m in methods):
        warnings.warn(KL_RAW_WARNING, stacklevel=2)


@register_method("simkd")
class SimKD(Method):
    Config = SimKDConfig
    summary = "SimKD (CVPR 2022): projected student features + the reused teacher classifier, with the seed ablations"
    loss_display = {"l2": "L2 loss", "kl": "KL divergence", "kl_raw": "KL divergence (raw features)"}
    metric_titles = {"masked_frac": ("Masked (gated)", "the mean fraction of samples the teacher-correct gate "
                                                       "removed (gated variants only)")}

    def __init__(self, config: SimKDConfig, student: FeatureModel, teacher: FeatureModel):
        super().__init__(config, student, teacher)
        if config.loss == "kl_raw":
            warnings.warn(KL_RAW_WARNING, stacklevel=2)
        self.pairs: list[TapPair] = plan_taps(config, student.feature_info, teacher.feature_info)
        self.projectors = nn.ModuleList(
            Projector(p.student_channels, p.teacher_channels, config.factor) for p in self.pairs
        )
        # A plain attribute, not a submodule: the teacher's classifier must stay out of this module's parameters,
        # optimizer and state_dict (it is frozen and saved with the teacher).
        object.__setattr__(self, "teacher_classifier", teacher.classifier_layer)

    @classmethod
    def loss_label(cls, config: SimKDConfig) -> str:
        return config.loss

    @classmethod
    def teacher_load(cls, config: SimKDConfig) -> int:
        return 1 + TAPS.index(config.taps)

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

    @property
    def needs_student_head(self) -> bool:
        c = self.config
        return c.ce_weight > 0 or c.kd_weight > 0 or c.eval_head == "student"

    def losses(self, student: Intermediates, targets: TeacherTargets, labels: torch.Tensor,
               context: StepContext) -> LossOutput:
        c = self.config
        mask = teacher_correct_mask(targets.logits, labels) if c.gate == "teacher_correct" else None
        feature_loss = 0.0
        for pair, projector in zip(self.pairs, self.projectors):
            projected = projector(_feature(student, pair.student), pair.size)
            per_sample = self._pair_loss(pair, projected, targets)
            feature_loss = feature_loss + pair.weight * reduce_gated(per_sample, mask, c.gate_normalise)
        parts = {"feat": c.feature_weight * feature_loss}
        parts.update(head_losses(student.logits, labels, targets, c.ce_weight, c.kd_weight, c.kd_temperature))
        metrics = {} if mask is None else {"masked_frac": 1.0 - mask.detach().mean()}
        return LossOutput(parts, metrics)

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
