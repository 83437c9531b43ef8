"""The frozen teacher's forward, in fixed-size chunks, so that a target never depends on its batch-mates.

On the CPU a sample's output can depend on the batch it is computed in: oneDNN and BLAS pick kernels and thread
splits by shape, and batches of 1-3 images (or 7 with two threads) give different last bits than a batch of 64. At
one fixed batch size the per-sample outputs were found independent of the sample's position and of its batch-mates
(`tests/test_perf.py` checks both). So every teacher forward here has exactly `chunk` images, the last chunk padded
with black images: a target computed on the fly inside a training batch and the same (image, view) computed inside
a teacher-cache chunk are then bitwise equal on the CPU, which makes a cached run equal an uncached one.

On CUDA the cache is built in larger chunks for throughput (cuDNN also picks algorithms by shape); there the two
agree to rounding, not bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdsweep.engine.fastpath import FastPath
from kdsweep.methods import TeacherNeeds, TeacherTargets, compute_teacher_targets
from kdsweep.models import FeatureModel


@dataclass
class TeacherRunner:
    teacher: FeatureModel | None
    needs: TeacherNeeds
    chunk: int  # images per teacher forward, always exactly (the last chunk is padded)
    fast: FastPath

    def __call__(self, images: torch.Tensor) -> TeacherTargets:
        """Targets for normalised images (B, C, 32, 32), in the teacher's output dtype (bf16 under autocast)."""
        if not self.needs.any:
            return TeacherTargets()
        pieces = []
        for start in range(0, images.shape[0], self.chunk):
            batch = images[start:start + self.chunk]
            real = batch.shape[0]
            if real < self.chunk:
                batch = torch.cat([batch, batch.new_zeros((self.chunk - real, *batch.shape[1:]))])
            with self.fast.autocast(batch.device):
                targets = compute_teacher_targets(self.teacher, self.fast.layout(batch), self.needs)
            pieces.append(_map(targets, lambda t, real=real: t[:real]))
        if len(pieces) == 1:
            return pieces[0]
        return TeacherTargets(
            {key: torch.cat([p.features[key] for p in pieces]) for key in pieces[0].features},
            None if pieces[0].logits is None else torch.cat([p.logits for p in pieces]),
        )


def as_float(targets: TeacherTargets) -> TeacherTargets:
    """fp32 targets (a no-op when they are fp32 already): losses are taken in fp32 also under bf16 autocast."""
    return _map(targets, lambda t: t.float())


def _map(targets: TeacherTargets, fn) -> TeacherTargets:
    return TeacherTargets({k: fn(v) for k, v in targets.features.items()},
                          None if targets.logits is None else fn(targets.logits))
