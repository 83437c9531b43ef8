"""A student group: one process, one frozen teacher, one data stream (the seed), K students.

Per batch the group augments the images once, gets the teacher targets once (the union of what its students'
methods need) from its teacher source - the shared teacher run on the fly, or the exact teacher cache - and steps
every student on them, one by one or fused (`fused.py`). Students may resume at different epochs (a group formed
after an interruption); a student simply sits out the epochs it has already done.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kdsweep.data import ImageData, load_dataset
from kdsweep.data.augment import augment, prepare_test
from kdsweep.data.stream import epoch_plan
from kdsweep.engine.device import describe_device, resolve_device
from kdsweep.engine.evaluate import accuracy
from kdsweep.engine.fastpath import FastPath, resolve_fast_path
from kdsweep.engine.fused import student_steppers
from kdsweep.engine.specs import GroupSpec
from kdsweep.engine.records import measured
from kdsweep.engine.student import FINAL, StudentTrainer, final_problem
from kdsweep.engine.teacher import load_teacher
from kdsweep.engine.teacher_source import TeacherSource, open_teacher_source
from kdsweep.methods import StepContext, TeacherNeeds, load_plugins
from kdsweep.models import FeatureModel
from kdsweep.storage import Store

ACCURACY_WARNING_POINTS = 5.0  # warn when a teacher tests this many points below its declared accuracy


@dataclass
class EpochReport:
    """What the group tells its caller after each epoch (for Ray Tune, progress displays)."""

    epoch: int  # 1-based epoch just finished
    students: list[dict]  # one summary per student that trained this epoch
    seconds: float
    remaining: int  # students of the group still training


def run_group(spec: GroupSpec, on_epoch: Callable[[EpochReport], None] | None = None,
              expected_epochs: dict[str, int] | None = None) -> list[dict]:
    """Train every unfinished student of `spec` to completion; returns their final records.

    `expected_epochs` (run id -> epochs done) is where a caller last saw each student checkpointed (Ray Tune's
    restored trial checkpoint): a student whose newest good checkpoint is older is resumed from that one, with a
    warning, since the newer checkpoints were damaged or lost."""
    group = set_up_group(spec, expected_epochs or {})
    if group.active:
        train_epochs(group, on_epoch)
    return [t.record.to_dict() for t in group.trainers]


@dataclass
class Group:
    """A set-up group: what the epoch loop needs."""

    spec: GroupSpec
    device: torch.device
    fast: FastPath
    data: ImageData
    trainers: list[StudentTrainer]  # every student of the group
    active: list[StudentTrainer]  # those still training
    test_inputs: torch.Tensor | None = None  # the normalised test images, in the fast path's layout
    source: TeacherSource | None = None


def set_up_group(spec: GroupSpec, expected_epochs: dict[str, int]) -> Group:
    """Load data and teacher, build and resume every student, measure the teacher and open its source. A group
    whose students are all finished stops after resuming them (nothing else is loaded onto the device)."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    load_plugins(spec.plugins)
    device = resolve_device(spec.device)
    store = Store(spec.storage)
    fast = resolve_fast_path(device, precision=spec.precision, channels_last=spec.channels_last,
                             compile=spec.compile, fuse_students=spec.fuse_students)
    data = load_dataset(spec.data).to(device)
    teacher = None
    if spec.teacher is not None:
        teacher, teacher_sha = load_teacher(spec.teacher.arch, spec.teacher.checkpoint, data.num_classes, device,
                                            data.geometry.image_size)
        teacher = fast.layout(teacher)
    trainers = [StudentTrainer(r, spec.group_id, teacher, data.num_classes, device, store, fast,
                               data.geometry.image_size) for r in spec.runs]
    for t in trainers:
        t.resume()
        expected = expected_epochs.get(t.run.run_id, 0)
        if t.record.epochs_done < expected:
            warnings.warn(f"{t.run.run_id} was checkpointed at epoch {expected}, but its newest good checkpoint in "
                          f"{store.location(t.folder)} is epoch {t.record.epochs_done}: continuing from there")
        if spec.save_final and t.record.status == "completed" and (problem := final_problem(store, t.folder)):
            # Stopped between its final checkpoint and final.pt, or final.pt damaged since: written again from the
            # final checkpoint (the same weights, in a file with a new checksum); without a good final checkpoint
            # the run continues from its newest good one, or trains again.
            warnings.warn(f"{store.location(f'{t.folder}/{FINAL}')} {problem}: writing it again from the run's "
                          f"checkpoints")
            t.resume(trust_a_finished_record=False)
            if t.finished:
                t.save_final()
    group = Group(spec, device, fast, data, trainers, [t for t in trainers if not t.finished])
    if not group.active:
        return group
    for t in group.active:
        t.record.device = describe_device(device)
        t.mark_running()

    needs = TeacherNeeds()
    for t in group.active:
        needs = needs | t.unit.method.teacher_needs()
    group.test_inputs = fast.layout(prepare_test(data.test_images, data.geometry))
    if teacher is not None:
        teacher_acc = measure_teacher_accuracy(teacher, teacher_sha, group.test_inputs, data.test_labels, store,
                                               spec.teacher.expected_accuracy)
        for t in group.active:
            t.record.teacher_acc, t.record.teacher_sha256 = teacher_acc, teacher_sha
    recipe = spec.runs[0].recipe
    first_epoch = min(t.record.epochs_done for t in group.active)
    group.source = open_teacher_source(spec.teacher_cache, teacher, needs, data, recipe.batch_size,
                                       recipe.epochs - first_epoch, fast, gpu_share=spec.gpu_share)
    for t in group.active:
        t.record.execution = {"teacher": group.source.kind if needs.any else "none", **fast.as_record()}
    return group


def train_epochs(group: Group, on_epoch: Callable[[EpochReport], None] | None) -> None:
    """The epoch loop: each epoch, the students due for it step through every batch, then are tested, recorded
    and checkpointed. Students resumed at different epochs sit out the epochs they have done."""
    spec, data, fast, device = group.spec, group.data, group.fast, group.device
    recipe = spec.runs[0].recipe
    n_train = data.train_images.shape[0]
    active = group.active
    for epoch in range(min(t.record.epochs_done for t in active), recipe.epochs):
        started = time.perf_counter()
        training = [t for t in active if t.record.epochs_done == epoch]
        for t in training:
            t.begin_epoch(epoch)
        steppers = student_steppers(training, fast)
        plan = epoch_plan(spec.seed, epoch, n_train, data.geometry.num_views).to(device)
        images_seen = 0
        batches = list(plan.batches(recipe.batch_size))
        for step, (indices, views) in enumerate(batches):
            context = StepContext(epoch, recipe.epochs, step, len(batches))
            images_seen += train_batch(data, indices, views, group.source, steppers, fast, context)
        for stepper in steppers:
            stepper.finish()
        for t in training:
            acc = t.test_accuracy(group.test_inputs, data.test_labels)
            t.end_epoch(epoch, acc, time.perf_counter() - started, images_seen)
        for t in training:
            if t.checkpoint_due() or t.finished:
                t.save_checkpoint()
            if t.record.status == "completed" and spec.save_final:
                t.save_final()
            t.write_progress()
        active = [t for t in active if not t.finished]
        if on_epoch:
            on_epoch(EpochReport(epoch + 1, [_summary(t) for t in training], time.perf_counter() - started,
                                 len(active)))
        if not active:
            break


def train_batch(data: ImageData, indices: torch.Tensor, views: torch.Tensor, source: TeacherSource, steppers: list,
                fast: FastPath, context: StepContext) -> int:
    """One step of every student on the batch (indices, views): augment once, teacher targets once. Returns the
    batch size."""
    images = fast.layout(augment(data.train_images[indices], views, data.geometry))
    labels = data.train_labels[indices]
    targets = source.targets(indices, views, images)
    for stepper in steppers:
        stepper.step(images, labels, targets, context)
    return labels.shape[0]


def _summary(t: StudentTrainer) -> dict:
    r = t.record
    last = r.history[-1] if r.history else {}
    return {"run_id": r.run_id, "status": r.status, "epoch": r.epochs_done, "test_acc": r.last_acc,
            "best_acc": r.best_acc, "train_loss": last.get("train_loss"), "measured": measured(last),
            "checkpoint": r.checkpoint}


def _stored_teacher_accuracy(store: Store, name: str, sha: str) -> float | None:
    if not store.exists(name):
        return None
    try:
        stored = json.loads(store.read_bytes(name))
        acc = stored["test_acc"]
        if stored["sha256"] == sha and isinstance(acc, (int, float)) and 0.0 <= acc <= 100.0:
            return float(acc)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        pass
    warnings.warn(f"teacher record {store.location(name)} is damaged; measuring the teacher's accuracy again")
    return None


def measure_teacher_accuracy(teacher: FeatureModel, sha: str, inputs: torch.Tensor, labels: torch.Tensor,
                             store: Store, expected: float | None) -> float:
    """The teacher's test accuracy, measured once per checkpoint and stored under `teachers/<sha>.json`."""
    name = f"teachers/{sha[:16]}.json"
    acc = _stored_teacher_accuracy(store, name, sha)
    if acc is None:  # never measured, or the stored measurement is damaged: measure again (a few seconds)
        acc = accuracy(teacher, inputs, labels)
        store.write_json(name, {"sha256": sha, "test_acc": acc, "test_images": int(labels.shape[0])})
    if expected is not None and acc < expected - ACCURACY_WARNING_POINTS:
        warnings.warn(
            f"the teacher tests at {acc:.2f}% on this dataset, far below the {expected:.2f}% declared in "
            f"teacher.expected_accuracy: is this the right checkpoint and dataset?"
        )
    return acc
