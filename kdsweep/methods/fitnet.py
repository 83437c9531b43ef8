"""`fitnet`: FitNets (Romero et al., ICLR 2015): a regressor maps a student map (the guided layer) onto a teacher
map (the hint), and an L2 loss pulls them together.

    hint = hint_weight * || r(s_stage) - t_stage ||^2  (mean over elements; r: conv3x3 + BN + ReLU)

on stage `hint_stage` of both networks, counted like a Python index (-2, the default, is the stage before the last:
the CIFAR ResNets' second residual stage, the hint layer mdistiller uses for them). The larger of the two maps is
average-pooled to the smaller one's size, as for SimKD's pairs.
Two schedules:

  joint      every epoch: ce_weight * CE + hint + kd_weight * KD, as mdistiller and RepDistiller train it
             (their CIFAR defaults: hint weight 100, CE 1, no KD).
  two_stage  the paper's: the first `hint_epochs` epochs train on the hint alone (only the layers below the guided
             layer and the regressor get gradients), the rest on ce_weight * CE + kd_weight * KD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdsweep.methods.base import LossOutput, Method, StepContext
from kdsweep.methods.head import head_losses
from kdsweep.methods.losses import l2_per_sample
from kdsweep.methods.projector import pool_to
from kdsweep.methods.registry import register_method
from kdsweep.methods.taps import FeatureRef
from kdsweep.methods.teacher_targets import TargetKey, TeacherNeeds, TeacherTargets
from kdsweep.models import FeatureInfo, FeatureModel, Intermediates
from kdsweep.typed_config import knob


@dataclass(frozen=True)
class FitNetConfig:
    hint_stage: int = knob(-2, doc="stage of both networks holding the guided layer and the hint, Python-style "
                                   "(-1: the last stage, -2: the one before it)")
    hint_weight: float = knob(100.0, ge=0, doc="weight of the hint's L2 loss")
    schedule: str = knob("joint", choices=("joint", "two_stage"), doc="hint with CE throughout, or hint first")
    hint_epochs: int = knob(0, ge=0, doc="two_stage: epochs trained on the hint alone")
    ce_weight: float = knob(1.0, ge=0, doc="cross-entropy with the labels")
    kd_weight: float = knob(0.0, ge=0, doc="Hinton KD on the logits (the paper's second stage uses it)")
    kd_temperature: float = knob(4.0, gt=0)


@register_method("fitnet")
class FitNet(Method):
    Config = FitNetConfig
    summary = "FitNets (ICLR 2015): an L2 hint on one stage through a conv regressor, joint or two-stage"
    loss_display = {"fitnet": "FitNet hint (L2)"}

    def __init__(self, config: FitNetConfig, student: FeatureModel, teacher: FeatureModel):
        super().__init__(config, student, teacher)
        for knob_name, problem in self.config_problems(config, student.feature_info, teacher.feature_info):
            raise ValueError(f"fitnet {knob_name}: {problem}")
        s, t = student.feature_info, teacher.feature_info
        self.guided = FeatureRef("stage", config.hint_stage % len(s.stage_channels))
        self.hint = FeatureRef("stage", config.hint_stage % len(t.stage_channels))
        self.size = min(self.guided.size(s), self.hint.size(t))
        channels = self.hint.channels(t)
        self.regressor = nn.Sequential(
            nn.Conv2d(self.guided.channels(s), channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    @classmethod
    def teacher_load(cls, config: FitNetConfig) -> int:
        return 1

    @classmethod
    def config_problems(cls, config: FitNetConfig, student: FeatureInfo, teacher: FeatureInfo | None):
        out = []
        stages = min(len(student.stage_channels), len(teacher.stage_channels) if teacher else 1)
        if not -stages <= config.hint_stage < stages:
            out.append(("hint_stage", f"a stage both networks have: -{stages} to {stages - 1}, "
                                      f"got {config.hint_stage}"))
        if config.schedule == "two_stage" and config.hint_epochs < 1:
            out.append(("hint_epochs", "at least 1 with schedule two_stage (the epochs trained on the hint alone)"))
        if config.schedule == "joint" and config.hint_epochs:
            out.append(("hint_epochs", "0 with schedule joint (it counts the hint-only epochs of two_stage)"))
        return out

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(frozenset({TargetKey(self.hint, self.size)}), logits=self.config.kd_weight > 0)

    def schedule(self, context: StepContext) -> dict[str, bool]:
        return {"hint_only": self.config.schedule == "two_stage" and context.epoch < self.config.hint_epochs}

    def hint_only(self, context: StepContext) -> bool:
        if "hint_only" in context.schedule:  # as the training loop passes it (see Method.schedule)
            return context.schedule["hint_only"]
        return self.schedule(context)["hint_only"]

    def losses(self, student: Intermediates, targets: TeacherTargets, labels: torch.Tensor,
               context: StepContext) -> LossOutput:
        c = self.config
        parts = {}
        if self.config.schedule == "joint" or self.hint_only(context):
            guided = self.regressor(pool_to(student.stages[self.guided.index], self.size))
            hint = targets.features[TargetKey(self.hint, self.size)]
            parts["hint"] = c.hint_weight * l2_per_sample(guided, hint).mean()
        if not self.hint_only(context):
            parts.update(head_losses(student.logits, labels, targets, c.ce_weight, c.kd_weight, c.kd_temperature))
        return LossOutput(parts)
