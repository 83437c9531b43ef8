"""Where a student group's teacher targets come from: the shared teacher run on the fly, or the exact cache.

Both answer `targets(indices, views, images)` with fp32 `TeacherTargets` for the batch: the images' dataset indices
and augmentation views (what the cache looks up) and the augmented, normalised images (what the teacher sees).

`teacher_cache` (the space's `execution.teacher_cache`):
  off   always the shared teacher, one forward per batch for the K students.
  on    always the cache; an error naming the sizes when it does not fit in the device's free memory.
  auto  the cache when it pays off - more epochs to go than views per image (162 for CIFAR: building it costs
        that many teacher forwards per image, as many as 162 epochs on the fly) - and fits in CACHE_MEMORY_FRACTION of the memory budget (the
        free memory; on CUDA at most the trial's `gpu_share` of the card, so that trials packed on one GPU leave
        each other room); else the shared teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdsweep.data import ImageData
from kdsweep.engine.fastpath import FastPath
from kdsweep.engine.memory import available_bytes, budget_bytes, gib
from kdsweep.engine.teacher_cache import TeacherCache, cache_bytes
from kdsweep.engine.teacher_runner import TeacherRunner, as_float
from kdsweep.errors import UserError
from kdsweep.methods import TeacherNeeds, TeacherTargets
from kdsweep.models import FeatureModel

CACHE_MODES = ("auto", "on", "off")
CACHE_MEMORY_FRACTION = 0.5  # auto: the cache may take at most this share of the free device memory / RAM
CUDA_CACHE_CHUNK = 2048  # views per teacher forward while building the cache on CUDA (large batches run near peak)


@dataclass
class OnTheFlyTeacher:
    """The shared teacher: one forward per training batch (padded to the batch size, see `teacher_runner`)."""

    runner: TeacherRunner
    kind: str = "shared"

    def targets(self, indices: torch.Tensor, views: torch.Tensor, images: torch.Tensor) -> TeacherTargets:
        return as_float(self.runner(images))


@dataclass
class CachedTeacher:
    cache: TeacherCache
    kind: str = "cache"

    def targets(self, indices: torch.Tensor, views: torch.Tensor, images: torch.Tensor) -> TeacherTargets:
        return self.cache.lookup(indices, views)


TeacherSource = OnTheFlyTeacher | CachedTeacher


def open_teacher_source(mode: str, teacher: FeatureModel | None, needs: TeacherNeeds, data: ImageData,
                        batch_size: int, epochs_left: int, fast: FastPath,
                        gpu_share: float | None = None) -> TeacherSource:
    """The teacher source for a group (building the cache when it is chosen); `data` is on the training device."""
    if mode not in CACHE_MODES:
        raise ValueError(f"teacher_cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    shared = OnTheFlyTeacher(TeacherRunner(teacher, needs, batch_size, fast))
    if mode == "off" or not needs.any:
        return shared
    device = data.train_images.device
    n, views = data.train_images.shape[0], data.geometry.num_views
    need = cache_bytes(needs, teacher.feature_info, data.num_classes, n, views, fast.bf16)
    free = available_bytes(device)
    if mode == "on" and need > free:
        raise UserError(
            f"teacher_cache: on needs {gib(need)} for {n} images x {views} views of this group's teacher "
            f"targets, but {device.type} has only {gib(free)} free. Use teacher_cache: auto (falls back to the "
            f"shared teacher), fewer distinct taps per group, or bf16 (precision: bf16 halves the cache)."
        )
    if mode == "auto":
        if epochs_left <= views or need > CACHE_MEMORY_FRACTION * budget_bytes(device, free, gpu_share):
            return shared
    # On the CPU the cache is built in chunks of the training batch size, exactly as the shared teacher runs,
    # which is what makes cached and uncached runs bitwise equal there (teacher_runner.py).
    chunk = max(batch_size, CUDA_CACHE_CHUNK) if device.type == "cuda" else batch_size
    with torch.no_grad():
        cache = TeacherCache.build(TeacherRunner(teacher, needs, chunk, fast), data.train_images, data.geometry)
    return CachedTeacher(cache)
