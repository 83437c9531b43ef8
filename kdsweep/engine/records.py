"""A run's progress record: status, per-epoch history and best accuracy, kept in `runs/<run_id>/progress.json`.

It is rewritten atomically after every epoch, so the result tables can be exported at any moment, also after a
crash. Checkpoints carry the same record, and on resume the checkpoint's copy wins (the progress file may be a few
epochs ahead of the last checkpoint).
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field

# The keys every epoch entry has; the others are what the run's method measured: its loss parts
# (train_loss_<part>) and its metrics, by their own names (kdsweep/methods/base.py: LossOutput).
EPOCH_KEYS = ("epoch", "test_acc", "best_acc", "best_epoch", "lr_epoch", "train_loss", "images_per_s", "wall_s",
              "finished_at")


def measured(entry: dict) -> dict:
    """The method's loss parts and metrics of one epoch entry, in the order it recorded them."""
    return {k: v for k, v in entry.items() if k not in EPOCH_KEYS}


STATUSES = ("pending", "running", "completed", "failed", "diverged")
FINAL_STATUSES = ("completed", "diverged")  # never re-run


@dataclass
class RunRecord:
    run_id: str
    group_id: str
    epochs: int
    status: str = "pending"
    epochs_done: int = 0
    best_acc: float | None = None
    best_epoch: int | None = None  # 1-based
    last_acc: float | None = None
    diverged_epoch: int | None = None  # 1-based epoch whose loss was not finite
    wall_s: float = 0.0  # training + evaluation seconds spent on this run, summed over resumes
    teacher_acc: float | None = None  # test accuracy (%) of the teacher this run distilled from
    teacher_sha256: str | None = None  # checksum of that teacher's checkpoint file
    device: str | None = None  # where it trained, e.g. "cuda: NVIDIA H100 80GB HBM3"
    # How it trained: teacher source ("shared", "cache", "none") and the speed switches (engine/fastpath.py).
    execution: dict | None = None
    history: list[dict] = field(default_factory=list)
    checkpoint: dict | None = None  # {"file", "sha256"} of the newest checkpoint
    resumed_from: list[int] = field(default_factory=list)  # epochs_done at each resume
    error: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    updated_at: float = field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def add_epoch(self, entry: dict) -> None:
        """Append one epoch's metrics (entry["epoch"] 1-based, entry["test_acc"] in percent)."""
        self.history.append(entry)
        self.epochs_done = entry["epoch"]
        self.last_acc = entry["test_acc"]
        self.wall_s += entry["wall_s"]
        acc = entry["test_acc"]
        if math.isfinite(acc) and (self.best_acc is None or acc > self.best_acc):
            self.best_acc, self.best_epoch = acc, entry["epoch"]
        entry["best_acc"], entry["best_epoch"] = self.best_acc, self.best_epoch  # best so far, and when

    def mean_over_epochs(self, key: str) -> float | None:
        """The mean of an epoch key (e.g. the gate's masked_frac) over the epochs that recorded it."""
        values = [e[key] for e in self.history if e.get(key) is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict:
        self.updated_at = time.time()
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunRecord:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})
