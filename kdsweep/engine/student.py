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

from kdsweep.engine.checkpoint import (CheckpointDir, from_bytes, to_bytes, verified_bytes, write_checksum,
                                      write_checksummed)
from kdsweep.engine.evaluate import accuracy
from kdsweep.engine.fastpath import FastPath, compiled
from kdsweep.engine.record_file import RECORD, record_problem
from kdsweep.engine.records import RunRecord
from kdsweep.engine.specs import RunSpec
from kdsweep.methods import Method, StepContext, TeacherTargets, build_method
from kdsweep.models import FeatureModel, Intermediates, create_model
from kdsweep.storage import Store

FINAL = "final.pt"  # a finished run's weights for inference, beside its progress.json (a trained teacher's: read by
# every group that distills from it)

CHECKPOINT_FORMAT = "kdsweep-run-v1"


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

    def forward(self, images: torch.Tensor, labels: torch.Tensor, targets: TeacherTargets, context: StepContext):
        """The training loss on one batch: (total, {part: weighted loss}, {metric: batch mean})."""
        return student_losses(self, images, labels, targets, context)


def student_losses(unit: StudentUnit, images: torch.Tensor, labels: torch.Tensor, targets: TeacherTargets,
                   context: StepContext):
    """(total, parts, metrics) of `unit` on a batch; a module-level function, so that torch.compile traces it once
    per process and student structure and every student of that structure reuses the graph."""
    out = unit.method.losses(unit.intermediates(images), targets, labels, context)
    return sum(out.parts.values()), out.parts, out.metrics


class EpochTotals:
    """An epoch's sums of the loss, its parts and the method's metrics (batch mean x batch size, summed over
    batches), kept on the device and read once per epoch, so the step never waits for the host. Keys: "total",
    "train_loss_<part>" and the metrics' own names, which are the epoch record's keys. In a fused group every value
    has a leading student axis and `select(k)` takes student k's."""

    def __init__(self, sums: dict[str, torch.Tensor] | None = None, samples: int = 0):
        self.sums, self.samples = dict(sums or {}), samples

    def add(self, loss: torch.Tensor, parts: dict, metrics: dict, n: int) -> None:
        self._add("total", loss.detach() * n)
        for name, value in parts.items():
            self._add(f"train_loss_{name}", value.detach() * n)
        for name, value in metrics.items():
            self._add(name, value.detach() * n)
        self.samples += n

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    def select(self, k: int) -> EpochTotals:
        return EpochTotals({name: value[k] for name, value in self.sums.items()}, self.samples)

    def read(self) -> tuple[dict[str, float], int]:
        """(sums as floats, samples): the one host sync of an epoch."""
        names = list(self.sums)
        values = torch.stack([self.sums[k].float() for k in names]).tolist() if names else []
        return dict(zip(names, values)), self.samples


def final_problem(store: Store, folder: str) -> str | None:
    """What is wrong with the final.pt of the finished run in `folder`, or None when its checksum file verifies it.
    One that an earlier kdsweep wrote without a checksum file is adopted if it loads: it was written atomically."""
    rel = f"{folder}/{FINAL}"
    if not store.exists(rel):
        return "is missing"
    problem, _ = verified_bytes(store, rel)
    if problem is None or store.exists(f"{rel}.sha256"):
        return problem
    data = store.read_bytes(rel)
    try:
        from_bytes(data)
    except Exception:
        return "does not load and has no checksum file"
    write_checksum(store, rel, data)
    return None


class StudentTrainer:
    def __init__(self, run: RunSpec, group_id: str, teacher: FeatureModel | None, num_classes: int,
                 device: torch.device, store: Store, fast: FastPath = FastPath(), image_size: int = 32):
        self.run, self.group_id, self.store, self.device, self.fast = run, group_id, store, device, fast
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            model = create_model(run.student_arch, num_classes=num_classes, image_size=image_size)
            method = build_method(run.method, model, teacher)
        self.unit = fast.layout(StudentUnit(model, method).to(device))
        self.teacher_classifier = teacher.classifier_layer if teacher is not None else None
        recipe = run.recipe
        self.optimizer = torch.optim.SGD(
            [p for p in self.unit.parameters() if p.requires_grad],
            lr=run.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, **self._sgd_kernel(),
        )
        self._losses = compiled(student_losses) if fast.compile else student_losses
        self.record = RunRecord(run_id=run.run_id, group_id=group_id, epochs=recipe.epochs)
        self.checkpoints = CheckpointDir(store, f"{self.folder}/checkpoints")
        self.totals = EpochTotals()

    @property
    def folder(self) -> str:
        return f"runs/{self.run.run_id}"

    @property
    def finished(self) -> bool:
        return self.record.finished

    # Resume --------------------------------------------------------------------------------------------------
    def resume(self, trust_a_finished_record: bool = True) -> None:
        """Continue from the newest good checkpoint, if any. A finished run's record is loaded as is, unless
        `trust_a_finished_record` is False (its final.pt is to be written again from the checkpoints)."""
        for folder in (self.folder, self.checkpoints.folder):  # what a kill mid-write left behind
            self.store.delete_unfinished_writes(folder)
        self.record = RunRecord(run_id=self.run.run_id, group_id=self.group_id, epochs=self.run.recipe.epochs)
        if trust_a_finished_record and self.store.exists(f"{self.folder}/{RECORD}"):
            # A damaged record is ignored here: the checkpoint below carries the record as of its epoch.
            _, stored = record_problem(self.store.read_bytes(f"{self.folder}/{RECORD}"), self.run.run_id)
            if stored is not None and stored.finished:
                self.record = stored
                return
        state = self.checkpoints.load_latest(map_location=self.device)
        if state is None:
            return
        self.unit.load_state_dict(state["unit"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._match_optimizer_to_this_process()
        self.record = RunRecord.from_dict(state["record"])
        if self.record.finished:
            # Stopped between its final checkpoint and its progress file: only the records need catching up.
            self.write_progress()
            return
        self.record.resumed_from.append(self.record.epochs_done)
        # Where it trains now: a resumed student joins whichever group the new sweep packed it into.
        self.record.group_id, self.record.host, self.record.pid = self.group_id, socket.gethostname(), os.getpid()

    # Training --------------------------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        lr = self.run.recipe.lr_at(self.run.lr, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.unit.train()
        self.record.status = "running"
        self.totals = EpochTotals()

    def _match_optimizer_to_this_process(self) -> None:
        """A loaded optimizer state is the saving process's: give it this device's SGD kernel, and momentum buffers
        in their parameters' memory layout. load_state_dict keeps a buffer's saved strides (contiguous from a CPU
        run, say), and CUDA's fused SGD refuses a buffer whose strides differ from its channels_last parameter's."""
        for group in self.optimizer.param_groups:
            group.update(self._sgd_kernel())
            for param in group["params"]:
                state = self.optimizer.state.get(param, {})
                buf = state.get("momentum_buffer")
                if buf is not None and buf.stride() != param.stride():
                    state["momentum_buffer"] = torch.empty_like(param).copy_(buf)

    def _sgd_kernel(self) -> dict:
        """torch's fused SGD kernel on CUDA; the single-tensor loop elsewhere (the bitwise reference)."""
        return {"fused": True, "foreach": False} if self.fast.fused_sgd else {"fused": None, "foreach": False}

    def step(self, images: torch.Tensor, labels: torch.Tensor, targets: TeacherTargets, context: StepContext) -> None:
        context = self.unit.method.scheduled(context, self.device)
        with self.fast.autocast(self.device):
            loss, parts, metrics = self._losses(self.unit, images, labels, targets, context)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.totals.add(loss, parts, metrics, labels.shape[0])

    def finish(self) -> None:
        """End of an epoch's steps: nothing to hand back, a lone student steps its own modules (see fused.py)."""

    def test_accuracy(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 test accuracy in percent through the method's prediction path, in eval mode."""
        self.unit.eval()
        try:
            return accuracy(self.unit.predict, inputs, labels)
        finally:
            self.unit.train()

    def end_epoch(self, epoch: int, test_acc: float, seconds: float, images_seen: int) -> None:
        """Record the epoch; a non-finite loss marks the run diverged (its group-mates carry on)."""
        totals, samples = self.totals.read()
        mean = {k: v / max(samples, 1) for k, v in totals.items()}
        entry = {
            "epoch": epoch + 1,
            "test_acc": test_acc,
            "lr_epoch": self.optimizer.param_groups[0]["lr"],
            "train_loss": mean.pop("total", float("nan")),
            **mean,  # every loss part (train_loss_<part>) and metric the method returned, under its own name
            "images_per_s": images_seen / seconds if seconds > 0 else None,
            "wall_s": seconds,
            "finished_at": time.time(),  # unix seconds: `kdsweep status` derives the sweep's rate from these
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
        write_checksummed(self.store, f"{self.folder}/{FINAL}", to_bytes(final))

    def write_progress(self) -> None:
        self.store.write_json(f"{self.folder}/{RECORD}", self.record.to_dict())

    def mark_running(self) -> None:
        self.record.status = "running"
        self.record.updated_at = time.time()
        self.write_progress()
