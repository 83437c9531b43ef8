"""One student run inside a group: its model and method, optimizer, epoch accumulators, checkpoints and record.

A student's initial weights depend only on its own seed (created under a forked RNG), and the batches it sees only
on the group's seed and the epoch, so a student trains to the same weights alone or beside any group-mates.
"""

from __future__ import annotations

import math
import os
import socket
import time

import torch
from torch import nn

from kdsweep.engine.checkpoint import CheckpointDir, to_bytes
from kdsweep.engine.evaluate import accuracy
from kdsweep.engine.records import RunRecord
from kdsweep.engine.specs import RunSpec
from kdsweep.methods import Method, TeacherTargets, build_method
from kdsweep.models import FeatureModel, Intermediates, create_model
from kdsweep.storage import Store

CHECKPOINT_FORMAT = "kdsweep-run-v1"
LOSS_PARTS = ("feat", "ce", "kd")


class StudentUnit(nn.Module):
    """Everything a student run trains and needs at inference: backbone + method extras (projectors)."""

    def __init__(self, model: FeatureModel, method: Method):
        super().__init__()
        self.model = model
        self.method = method

    def intermediates(self, images: torch.Tensor) -> Intermediates:
        m = self.method
        return self.model.forward_intermediates(images, blocks=m.needs_student_blocks, head=m.needs_student_head)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.predict(self.intermediates(images))


class StudentTrainer:
    def __init__(self, run: RunSpec, group_id: str, teacher: FeatureModel | None, num_classes: int,
                 device: torch.device, store: Store):
        self.run, self.store, self.device = run, store, device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            model = create_model(run.student_arch, num_classes=num_classes)
            method = build_method(run.method, model, teacher)
        self.unit = StudentUnit(model, method).to(device)
        self.teacher_classifier = teacher.classifier_layer if teacher is not None else None
        recipe = run.recipe
        self.optimizer = torch.optim.SGD(
            [p for p in self.unit.parameters() if p.requires_grad],
            lr=run.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
        )
        self.record = RunRecord(run_id=run.run_id, group_id=group_id, epochs=recipe.epochs)
        self.checkpoints = CheckpointDir(store, f"{self.folder}/checkpoints")
        self._totals: dict[str, torch.Tensor] = {}
        self._samples = 0

    @property
    def folder(self) -> str:
        return f"runs/{self.run.run_id}"

    @property
    def finished(self) -> bool:
        return self.record.finished

    # Resume --------------------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the newest good checkpoint, if any. A finished run's record is loaded as is."""
        if self.store.exists(f"{self.folder}/progress.json"):
            stored = RunRecord.from_dict(self.store.read_json(f"{self.folder}/progress.json"))
            if stored.finished:
                self.record = stored
                return
        state = self.checkpoints.load_latest(map_location=self.device)
        if state is None:
            return
        self.unit.load_state_dict(state["unit"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.record = RunRecord.from_dict(state["record"])
        if self.record.finished:
            # Stopped between its final checkpoint and its progress file: only the records need catching up.
            self.write_progress()
            return
        self.record.resumed_from.append(self.record.epochs_done)
        self.record.host, self.record.pid = socket.gethostname(), os.getpid()

    # Training --------------------------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        lr = self.run.recipe.lr_at(self.run.lr, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.unit.train()
        self.record.status = "running"
        self._totals, self._samples = {}, 0

    def step(self, images: torch.Tensor, labels: torch.Tensor, targets: TeacherTargets) -> None:
        out = self.unit.method.losses(self.unit.intermediates(images), targets, labels)
        loss = sum(out.parts.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # Accumulate on the device; read once per epoch (no host sync in the step).
        n = labels.shape[0]
        self._add("total", loss.detach() * n)
        for name, value in out.parts.items():
            self._add(name, value.detach() * n)
        if out.kept is not None:
            self._add("kept", out.kept.detach())
        self._samples += n

    def _add(self, name: str, value: torch.Tensor) -> None:
        self._totals[name] = self._totals[name] + value if name in self._totals else value

    def test_accuracy(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 test accuracy in percent through the method's prediction path, in eval mode."""
        self.unit.eval()
        try:
            return accuracy(self.unit.predict, inputs, labels)
        finally:
            self.unit.train()

    def end_epoch(self, epoch: int, test_acc: float, seconds: float, images_seen: int) -> None:
        """Record the epoch; a non-finite loss marks the run diverged (its group-mates carry on)."""
        names = list(self._totals)
        values = torch.stack([self._totals[k].float() for k in names]).tolist() if names else []
        totals = dict(zip(names, values))
        mean = {k: v / max(self._samples, 1) for k, v in totals.items() if k != "kept"}
        entry = {
            "epoch": epoch + 1,
            "test_acc": test_acc,
            "lr_epoch": self.optimizer.param_groups[0]["lr"],
            "train_loss": mean.get("total", float("nan")),
            **{f"train_loss_{k}": mean.get(k) for k in LOSS_PARTS},
            "masked_frac": 1.0 - totals["kept"] / self._samples if "kept" in totals else None,
            "images_per_s": images_seen / seconds if seconds > 0 else None,
            "wall_s": seconds,
        }
        self.record.add_epoch(entry)
        if not math.isfinite(entry["train_loss"]):
            self.record.status, self.record.diverged_epoch = "diverged", epoch + 1
        elif self.record.epochs_done >= self.record.epochs:
            self.record.status = "completed"

    # Persistence ------------------------------------------------------------------------------------------------
    def checkpoint_due(self) -> bool:
        done = self.record.epochs_done
        return done % self.run.recipe.checkpoint_every == 0 or done >= self.record.epochs

    def save_checkpoint(self) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "run": self.run.to_dict(),
            "unit": self.unit.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "record": self.record.to_dict(),
        }
        self.record.checkpoint = self.checkpoints.save(self.record.epochs_done, state)

    def save_final(self) -> None:
        """Weights for inference: student backbone ({"model": ...}, RepDistiller style), projectors and the
        teacher classifier they feed, so the saved result predicts without the teacher checkpoint."""
        final = {
            "format": "kdsweep-final-v1",
            "arch": self.run.student_arch,
            "method": self.run.method.as_record(),
            "model": self.unit.model.state_dict(),
            "projectors": self.unit.method.state_dict(),
            "teacher_classifier": self.teacher_classifier.state_dict() if self.teacher_classifier else None,
            "best_acc": self.record.best_acc,
            "last_acc": self.record.last_acc,
        }
        self.store.write_bytes(f"{self.folder}/final.pt", to_bytes(final))

    def write_progress(self) -> None:
        self.store.write_json(f"{self.folder}/progress.json", self.record.to_dict())

    def mark_running(self) -> None:
        self.record.status = "running"
        self.record.updated_at = time.time()
        self.write_progress()
