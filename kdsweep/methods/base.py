"""What every method owns: its config, what it needs from the teacher, its trainable extras, its named losses, its
metrics and its prediction path.

The training loop knows nothing about methods (after mdistiller's distiller base class): it runs the student, hands
the student's intermediates, the teacher targets and a `StepContext` to `losses`, sums the returned parts, averages
every part and metric over the epoch's samples into the run's records, and scores test accuracy through `predict`.
Evaluating the bare student instead of `predict` is the classic SimKD mistake: a SimKD student's own classifier is
never trained.

A method is one file in this package: a frozen config dataclass declared with `typed_config.knob`, and a `Method`
subclass decorated with `@register_method` (`registry.py`), which names it. See docs/extending.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn

from kdsweep.methods.teacher_targets import TeacherNeeds, TeacherTargets
from kdsweep.models import FeatureInfo, FeatureModel, Intermediates


@dataclass(frozen=True)
class StepContext:
    """Where in training a step is, for schedules such as DKD's warm-up or FitNets' two stages."""

    epoch: int  # 0-based epoch being trained
    epochs: int  # epochs in the run
    step: int = 0  # 0-based step within the epoch
    steps_per_epoch: int = 1
    # The method's `schedule(context)`, as the training loop hands it to `losses`: floats as 0-d float32 tensors on
    # the training device, bools as they are. Empty when `losses` is called directly.
    schedule: dict = field(default_factory=dict)


@dataclass
class LossOutput:
    # Weighted batch losses by name, e.g. {"feat": ..., "ce": ...}; the training loss is their sum, in this order.
    parts: dict[str, torch.Tensor]
    # Batch means of what else the method measures, e.g. {"masked_frac": ...} (the gate's dropped share). No
    # gradient flows through them; each becomes a column of epochs.parquet and trials.parquet under its name.
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    name: ClassVar[str]  # set by @register_method
    Config: ClassVar[type]  # the frozen dataclass of its knobs
    summary: ClassVar[str] = ""  # one line for `kdsweep methods`
    needs_teacher: ClassVar[bool] = True
    # Report names of the labels `loss_label` returns (results.md's "Loss" column).
    loss_display: ClassVar[dict[str, str]] = {}
    # Column titles of the metrics `losses` returns in results.md's cells table, and what each one means (a
    # sentence under the table); a metric without a title is shown by its name. Names ending in _frac are
    # fractions, shown as percentages.
    metric_titles: ClassVar[dict[str, tuple[str, str]]] = {}

    def __init__(self, config, student: FeatureModel, teacher: FeatureModel | None):
        super().__init__()
        self.config = config

    # What the group must compute before calling `losses`.
    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds()

    @property
    def needs_student_blocks(self) -> bool:
        return False

    @property
    def needs_student_head(self) -> bool:
        return True

    def losses(self, student: Intermediates, targets: TeacherTargets, labels: torch.Tensor,
               context: StepContext) -> LossOutput:
        raise NotImplementedError

    def predict(self, student: Intermediates) -> torch.Tensor:
        """Logits used for test accuracy."""
        return student.logits

    def schedule(self, context: StepContext) -> dict[str, float | bool]:
        """Per-step values of a schedule (a warm-up weight, which stage of training this is), computed outside the
        compiled step. Read them in `losses` from `context.schedule` rather than deriving them from `context.epoch`:
        torch.compile (on by default on CUDA) builds a new graph for every distinct Python number a step reads, but
        not for a tensor's value, so a float reaches `losses` as a tensor (no new graph) and a bool as a bool (one
        graph per value, e.g. FitNets' two stages)."""
        return {}

    def scheduled(self, context: StepContext, device: torch.device) -> StepContext:
        """`context` with this method's schedule filled in, as the training loop passes it."""
        values = self.schedule(context)
        if not values:
            return context
        return replace(context, schedule={k: v if isinstance(v, bool) else _scalar(float(v), device)
                                          for k, v in values.items()})

    # Declarations the sweep reads without building the method -------------------------------------------------
    @classmethod
    def loss_label(cls, config) -> str:
        """What the report's Loss column shows for runs of this config (SimKD: its feature loss)."""
        return cls.name

    @classmethod
    def teacher_load(cls, config) -> int:
        """How many teacher maps it taps, as a rank (0: logits or nothing): groups are packed in this order so that
        students with huge teacher caches fill groups of their own (sweep/plan.py)."""
        return 0

    @classmethod
    def config_problems(cls, config, student: FeatureInfo, teacher: FeatureInfo | None) -> list[tuple[str, str]]:
        """(knob, expectation) for settings that are invalid together or for this student/teacher pair."""
        return []


@functools.lru_cache(maxsize=256)
def _scalar(value: float, device: torch.device) -> torch.Tensor:
    """A read-only 0-d float32 tensor on `device`, made once per value (a schedule changes once per epoch, not per
    step, so the host-to-device copy is not paid every step)."""
    return torch.tensor(value, dtype=torch.float32, device=device)
