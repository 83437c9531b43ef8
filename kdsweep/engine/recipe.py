"""The training recipe: the SimKD/RepDistiller CIFAR-100 schedule by default, never overridden silently.

`Recipe` is a typed config (typed_config.py): the search space's `recipe:` section, `kdsweep train`'s flags and the
engine all use this one class, and `TeacherRecipe` (the space's `teacher.train:`) is the same recipe plus the
teacher's lr and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdsweep import typed_config
from kdsweep.typed_config import MAX_SEED, knob  # noqa: F401 (MAX_SEED: imported from here too)

REFERENCE_EPOCHS = 240
REFERENCE_MILESTONES = (150, 180, 210)  # lr x gamma after these many epochs
# Upper bounds that only catch typos (a missing decimal point, an extra zero group): 400x the reference's epochs,
# and a batch far above any CIFAR recipe's whose activations would not fit a GPU anyway.
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536


@dataclass(frozen=True)
class Recipe:
    epochs: int = knob(REFERENCE_EPOCHS, ge=1, le=MAX_EPOCHS, doc="training epochs")
    batch_size: int = knob(64, ge=2, le=MAX_BATCH, doc="images per step (BatchNorm needs two)")
    optimizer: str = knob("sgd", choices=("sgd",), doc="SGD with momentum, as the reference")
    momentum: float = knob(0.9, ge=0, lt=1)
    weight_decay: float = knob(5e-4, ge=0, doc="L2 penalty on every trainable parameter")
    # Epoch counts after which the lr is multiplied by gamma. None: the reference's 150/180/210 scaled by
    # epochs / 240 (rounded), so a 24-epoch run decays after 15, 18 and 21 epochs.
    milestones: tuple[int, ...] | None = knob(None, ge=1, doc="epochs after which lr x gamma (null: 150/180/210 "
                                                               "scaled to epochs)")
    gamma: float = knob(0.1, gt=0, le=1, doc="lr factor at each milestone")
    checkpoint_every: int = knob(10, ge=1, doc="epochs between checkpoints (the last epoch is always one)")

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
        """What run ids hash and records keep. SGD is the only optimizer so far and earlier run ids hashed none,
        so `optimizer` enters the record only once it is something else."""
        record = typed_config.as_record(self)
        if record["optimizer"] == "sgd":
            del record["optimizer"]
        record["milestones"] = list(self.milestone_epochs())
        return record

    @classmethod
    def from_record(cls, record: dict) -> Recipe:
        return typed_config.from_record(cls, record)



@dataclass(frozen=True)
class TeacherRecipe(Recipe):
    """`teacher.train`: the teacher trained inside the experiment with plain cross-entropy, at its own lr and seed."""

    lr: float = knob(0.05, gt=0, doc="the teacher's learning rate")
    seed: int = knob(0, ge=0, le=MAX_SEED, doc="the teacher's seed")

    def recipe(self) -> Recipe:
        return Recipe(**{k: getattr(self, k) for k in typed_config.knob_names(Recipe)})


def recipe_problems(recipe: Recipe, path: str) -> list[tuple[str, str]]:
    """Explicit milestones must increase and lie inside the run: one at or past `epochs` would never fire, which is
    almost always a recipe copied from a longer run (omit `milestones` to scale the reference 150/180/210)."""
    m = recipe.milestones
    if m is None:
        return []
    if any(b <= a for a, b in zip(m, m[1:])):
        return [(f"{path}.milestones", f"must be strictly increasing, got {list(m)}")]
    late = [x for x in m if x >= recipe.epochs]
    if late:
        return [(f"{path}.milestones", f"{late} not below {path}.epochs ({recipe.epochs}), so they would never take "
                 f"effect; omit `milestones` to scale the reference 150/180/210 to {recipe.epochs} epochs")]
    return []


def section_problems(cls: type, values, path: str) -> list[tuple[str, str]]:
    """Every problem of a space's recipe-like section (`recipe`, `teacher.train`), keys and rules together."""
    found = typed_config.problems(cls, values, path, owner=path, noun="key")
    if found:
        return found
    return recipe_problems(typed_config.build(cls, values), path)
