"""Which student map is distilled towards which teacher map, with what weight.

A tap pair names a student map and a teacher map by position (a stage or a block of `FeatureInfo`), their
aligned spatial size (the smaller of the two: the larger map is adaptive-average-pooled, as in SimKD), and the
pair's loss weight. Exactly one pair, the last, feeds the reused teacher classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdsweep.models import FeatureInfo

TAPS = ("last", "multi", "all_blocks")  # SimKD's tap choices, in increasing number of teacher maps


@dataclass(frozen=True, order=True)
class FeatureRef:
    level: str  # "stage" | "block"
    index: int  # 0-based, non-negative

    def channels(self, info: FeatureInfo) -> int:
        return (info.stage_channels if self.level == "stage" else info.block_channels)[self.index]

    def size(self, info: FeatureInfo) -> int:
        return info.stage_size(self.index) if self.level == "stage" else info.block_size(self.index)


@dataclass(frozen=True)
class TapPair:
    student: FeatureRef
    teacher: FeatureRef
    student_channels: int
    teacher_channels: int
    student_size: int
    teacher_size: int
    weight: float
    feeds_classifier: bool

    @property
    def size(self) -> int:
        """Spatial size both maps are compared at."""
        return min(self.student_size, self.teacher_size)


def plan_taps(config, student: FeatureInfo, teacher: FeatureInfo) -> list[TapPair]:
    """The tap pairs of a SimKD config (taps, multi_weights, pairing, last_weight), shallowest first; the last one
    feeds the teacher classifier."""
    n_s, n_t = len(student.stage_channels), len(teacher.stage_channels)
    last = (FeatureRef("stage", n_s - 1), FeatureRef("stage", n_t - 1))
    if config.taps == "last":
        refs, weights = [last], [1.0]
    elif config.taps == "multi":
        previous = (FeatureRef("stage", n_s - 2), FeatureRef("stage", n_t - 2))
        w_last, w_prev = config.multi_weights
        refs, weights = [previous, last], [w_prev, w_last]
    elif config.taps == "all_blocks":
        refs = _block_pairs(len(student.block_channels), len(teacher.block_channels), config.pairing)
        weights = _all_block_weights(len(refs), config.last_weight)
    else:
        raise ValueError(f"unknown taps '{config.taps}'")
    return [
        TapPair(
            student=s, teacher=t,
            student_channels=s.channels(student), teacher_channels=t.channels(teacher),
            student_size=s.size(student), teacher_size=t.size(teacher),
            weight=w, feeds_classifier=(i == len(refs) - 1),
        )
        for i, ((s, t), w) in enumerate(zip(refs, weights))
    ]


def _block_pairs(n_s: int, n_t: int, pairing: str) -> list[tuple[FeatureRef, FeatureRef]]:
    """min(n_s, n_t) pairs ending at both last blocks.

    index: the deeper network's first |n_s - n_t| blocks get no partner (MobileNetV2 -> resnet32x4: student block
    k + 2 <-> teacher block k, k = 0..14, as the seed report's authors ran it).
    relative_depth: the shallower network's block k meets the deeper network's block at the same relative depth,
    ceil((k + 1) * n_deep / n) - 1, so the pairs spread over the whole deeper network.
    """
    n = min(n_s, n_t)
    if pairing == "index":
        pairs = [(n_s - n + k, n_t - n + k) for k in range(n)]
    elif pairing == "relative_depth":
        def at_depth(k: int, n_deep: int) -> int:
            return math.ceil((k + 1) * n_deep / n) - 1

        pairs = [(at_depth(k, n_s), at_depth(k, n_t)) for k in range(n)]
    else:
        raise ValueError(f"unknown pairing '{pairing}'")
    return [(FeatureRef("block", s), FeatureRef("block", t)) for s, t in pairs]


def _all_block_weights(n: int, last_weight: float | None) -> list[float]:
    if last_weight is None or n == 1:
        return [1.0 / n] * n
    return [(1.0 - last_weight) / (n - 1)] * (n - 1) + [last_weight]
