"""Rough cost of a sweep from FLOP counts (forward FLOPs per image of the dataset's size, counted once per architecture).

Training a student costs about 3x its forward (forward + backward); the frozen teacher costs one forward per
training image per *group* epoch when shared. The GPU-hour figure assumes 30% of an H100's dense bf16 peak
(989 TFLOP/s), which the best hand-tuned CIFAR trainers reach (docs/cost-model.md); small students are launch-bound
and do worse, so read it as an order of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

H100_BF16_PEAK = 989e12  # FLOP/s, dense
ASSUMED_UTILISATION = 0.30
CPU_CORE_FLOPS = 10e9  # FLOP/s per core, measured order of magnitude for fp32 convs on this class of CPU


@lru_cache(maxsize=None)
def forward_flops(arch: str, num_classes: int = 100, image_size: int = 32) -> float:
    """FLOPs (2 x MACs) of one forward of one image_size x image_size image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kdsweep.models import create_model

    model = create_model(arch, num_classes=num_classes, image_size=image_size).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size))
    return float(counter.get_total_flops())


@dataclass
class Cost:
    flops_shared: float  # whole sweep, teacher shared by each group
    flops_naive: float  # the same runs with the teacher re-run for every student

    def gpu_hours(self, flops: float) -> float:
        return flops / (H100_BF16_PEAK * ASSUMED_UTILISATION) / 3600

    def cpu_core_hours(self, flops: float) -> float:
        return flops / CPU_CORE_FLOPS / 3600


def sweep_cost(teacher: str, student: str, runs: int, teacher_runs: int, teacher_groups: int, epochs: int,
               train_images: int, test_images: int, num_classes: int = 100, image_size: int = 32) -> Cost:
    """`runs` students, of which `teacher_runs` use the teacher (vanilla students do not), packed into groups of
    which `teacher_groups` run it (once per batch for the whole group when it is shared)."""
    t = forward_flops(teacher, num_classes, image_size)
    s = forward_flops(student, num_classes, image_size)
    student_epoch = 3 * s * train_images + s * test_images
    shared = teacher_groups * epochs * t * train_images + runs * epochs * student_epoch
    naive = teacher_runs * epochs * t * train_images + runs * epochs * student_epoch
    return Cost(shared, naive)
