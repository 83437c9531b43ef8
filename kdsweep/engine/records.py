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

    def masked_fraction(self) -> float | None:
        values = [e["masked_frac"] for e in self.history if e.get("masked_frac") is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict:
        self.updated_at = time.time()
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunRecord:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})
