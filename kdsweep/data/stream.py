"""The per-epoch data plan: which image goes where, and which augmentation view it gets.

A plan is a pure function of (seed, epoch): it is drawn on the CPU with a private generator, so it is identical on
every device and in every process, whatever else has consumed random numbers, and it never touches the global RNG.
Students that share a seed therefore see identical batches, which is what lets one teacher forward (or one cached
teacher target per view) serve all of them. The engine copies the plan to its device once per epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


def seeded_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from a well-mixed hash of `key`.

    The seed is the first 63 bits of BLAKE2b(repr(key)). Nearby keys such as (0, 1) and (0, 2), or (seed, epoch) and
    (seed + 1, epoch - 1), give unrelated streams, unlike seeding with seed + epoch; the hash is stable across Python
    versions and processes (unlike `hash()`).
    """
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little") >> 1)


@dataclass
class EpochPlan:
    order: torch.Tensor  # int64 (N,): a permutation of the training set, the order images are visited in
    views: torch.Tensor  # int64 (N,): the augmentation view (see augment.py) of the image at each position of order

    def num_batches(self, batch_size: int) -> int:
        """How many batches `batches(batch_size)` yields."""
        full, rest = divmod(len(self.order), _check_batch_size(batch_size))
        return full + (rest > 1)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, views) slices of `batch_size`, in order; the last may be smaller.

        A final batch of one image is dropped: BatchNorm cannot compute batch statistics from one sample.
        """
        batch_size = _check_batch_size(batch_size)
        total = len(self.order)
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            if stop - start > 1:
                yield self.order[start:stop], self.views[start:stop]

    def to(self, device: torch.device | str) -> EpochPlan:
        return EpochPlan(self.order.to(device), self.views.to(device))


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 for BatchNorm training, got {batch_size}")
    return batch_size


def epoch_plan(seed: int, epoch: int, num_images: int, num_views: int) -> EpochPlan:
    """The shuffle order and augmentation views of one epoch; a pure function of its arguments.

    Views are uniform on 0..num_views - 1 (`Geometry.num_views`), which is exactly torchvision's draw: crop offsets
    dy, dx uniform on 0..2p and the flip Bernoulli(0.5), all independent (0..161 for CIFAR's padding 4).
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    generator = seeded_generator("kdsweep.epoch_plan", int(seed), int(epoch))
    order = torch.randperm(num_images, generator=generator)
    views = torch.randint(0, num_views, (num_images,), generator=generator)
    return EpochPlan(order, views)
