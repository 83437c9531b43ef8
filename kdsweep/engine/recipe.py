"""The training recipe: the SimKD/RepDistiller CIFAR-100 schedule by default, never overridden silently."""

from __future__ import annotations

from dataclasses import asdict, dataclass

REFERENCE_EPOCHS = 240
REFERENCE_MILESTONES = (150, 180, 210)  # lr x gamma after these many epochs


@dataclass(frozen=True)
class Recipe:
    epochs: int = REFERENCE_EPOCHS
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Epoch counts after which the lr is multiplied by gamma. None: the reference's 150/180/210 scaled by
    # epochs / 240 (rounded), so a 24-epoch run decays after 15, 18 and 21 epochs.
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1
    checkpoint_every: int = 10  # epochs between checkpoints (the last epoch is always checkpointed)

    def milestone_epochs(self) -> tuple[int, ...]:
        if self.milestones is not None:
            return tuple(self.milestones)
        return tuple(round(m * self.epochs / REFERENCE_EPOCHS) for m in REFERENCE_MILESTONES)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        """lr for 0-based `epoch`: base_lr * gamma^(milestones already passed), as the reference's
        `adjust_learning_rate` with its 1-based epochs (decay from epoch 151 on for milestone 150)."""
        passed = sum(epoch >= m for m in self.milestone_epochs())
        return base_lr * self.gamma ** passed

    def as_record(self) -> dict:
        record = asdict(self)
        record["milestones"] = list(self.milestone_epochs())
        return record

    @classmethod
    def from_record(cls, record: dict) -> Recipe:
        values = dict(record)
        if values.get("milestones") is not None:
            values["milestones"] = tuple(values["milestones"])
        return cls(**values)
