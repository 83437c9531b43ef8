"""The exact teacher cache: the group's teacher targets for every training image in every augmentation view.

RandomCrop(S, padding=p) + flip gives each image exactly (2p + 1)^2 x 2 views (`kdsweep.data.augment`; 162 for
CIFAR's 32 px with padding 4), and the teacher is
frozen, so its targets can be computed once per (image, view) and looked up for whatever views an epoch draws.
Only what the group's methods need is stored (`TeacherNeeds`: pooled maps at the taps, logits for a gate or a
logit loss), in the teacher's output dtype: fp32, or bf16 under bf16 autocast (then the on-the-fly teacher is bf16
as well, so storing bf16 loses nothing).

Memory = N images x views x (per-view elements) x bytes. CIFAR-100 with a MobileNetV2 student's last tap
(256 x 2 x 2 = 1024 elements): 50000 x 162 x 1024 x 2 B = 16.6 GB in bf16, 33 GB in fp32; a gate or a logit loss
adds 100 logits per view (1.6 GB bf16). Building it costs 162 teacher forwards per image, as many as 162 epochs of
the shared teacher: it pays off for groups with more than 162 epochs to go, and on CUDA also because it runs in
large chunks.
"""

from __future__ import annotations

import torch

from kdsweep.data.augment import augment
from kdsweep.data.geometry import Geometry
from kdsweep.engine.teacher_runner import TeacherRunner, as_float
from kdsweep.methods import TeacherNeeds, TeacherTargets
from kdsweep.models import FeatureInfo


def view_elements(needs: TeacherNeeds, teacher: FeatureInfo, num_classes: int) -> int:
    """Numbers stored per (image, view): every pooled map in `needs` (C x size x size) plus the logits if needed."""
    maps = sum(key.ref.channels(teacher) * key.size ** 2 for key in needs.features)
    return maps + (num_classes if needs.logits else 0)


def cache_bytes(needs: TeacherNeeds, teacher: FeatureInfo, num_classes: int, num_images: int, num_views: int,
                bf16: bool) -> int:
    return num_images * num_views * view_elements(needs, teacher, num_classes) * (2 if bf16 else 4)


class TeacherCache:
    """Targets stored as (N * V, ...) tensors for V views per image, row = image index * V + view."""

    def __init__(self, features: dict, logits: torch.Tensor | None, num_views: int):
        self.features, self.logits, self.num_views = features, logits, num_views

    @classmethod
    def build(cls, runner: TeacherRunner, images: torch.Tensor, geometry: Geometry) -> TeacherCache:
        """Run the teacher on every view of every uint8 image, `runner.chunk` views per forward, on their device."""
        views = geometry.num_views
        total = images.shape[0] * views
        features: dict = {}
        logits = None
        for start in range(0, total, runner.chunk):
            rows = torch.arange(start, min(start + runner.chunk, total), device=images.device)
            targets = runner(augment(images[rows // views], rows % views, geometry))
            if start == 0:  # shapes and dtype come from the first chunk
                features = {k: v.new_empty((total, *v.shape[1:])) for k, v in targets.features.items()}
                if targets.logits is not None:
                    logits = targets.logits.new_empty((total, *targets.logits.shape[1:]))
            for key, value in targets.features.items():
                features[key][start:start + len(rows)] = value
            if logits is not None:
                logits[start:start + len(rows)] = targets.logits
        return cls(features, logits, views)

    def lookup(self, indices: torch.Tensor, views: torch.Tensor) -> TeacherTargets:
        """fp32 targets for image `indices` seen in `views` (both int64 (B,), on the cache's device)."""
        rows = indices * self.num_views + views
        stored = TeacherTargets({k: v[rows] for k, v in self.features.items()},
                                None if self.logits is None else self.logits[rows])
        return as_float(stored)

    @property
    def nbytes(self) -> int:
        tensors = [*self.features.values(), *([self.logits] if self.logits is not None else [])]
        return sum(t.numel() * t.element_size() for t in tensors)
