"""Data: CIFAR-100 from disk or a synthetic stand-in, held as uint8 tensors, augmented on the device.

    data = load_dataset(DataSpec("cifar100", root="~/data")).to("cuda")     # whole dataset resident, ~180 MB
    plan = epoch_plan(seed, epoch, len(data.train_labels)).to("cuda")       # order + views, same on every device
    for idx, views in plan.batches(64):
        x = augment(data.train_images[idx], views, data.mean, data.std)     # float32 (64, 3, 32, 32)
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import torch

from kdsweep.data.augment import (
    NUM_VIEWS,
    apply_views,
    augment,
    decode_views,
    encode_views,
    normalise,
    prepare_test,
)
from kdsweep.data.cifar100 import read_cifar100
from kdsweep.data.stream import EpochPlan, epoch_plan
from kdsweep.data.synthetic import make_synthetic
from kdsweep.errors import UserError, unknown_name

# CIFAR-100 training-set channel statistics (the reference's Normalize), used for both datasets.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
DATASETS = ("cifar100", "synthetic")


@dataclass(frozen=True)
class DataSpec:
    name: str = "cifar100"  # "cifar100" | "synthetic"
    root: str | None = None  # cifar100: the directory that contains (or will contain) cifar-100-python/
    download: bool = False  # cifar100: fetch with torchvision when missing (needs internet)
    num_classes: int = 100  # synthetic only (cifar100 reads its class count from meta: 100)
    train_size: int = 50000  # synthetic only
    test_size: int = 10000  # synthetic only
    seed: int = 0  # synthetic only: the dataset is a pure function of (seed, sizes, classes)
    train_subset: int | None = None  # both: keep only the first N training images (for tests / quick runs)
    test_subset: int | None = None

    def identity(self) -> dict:
        """What fixes the images a run sees, for run ids: not where CIFAR-100 is mounted or whether it may be
        downloaded, so an experiment resumes with its dataset at another path (a cluster's shared mount)."""
        return {k: v for k, v in asdict(self).items() if k not in ("root", "download")}

    def validate(self) -> None:
        """Raise a UserError listing every problem; fields that do not apply to `name` must keep their defaults."""
        if self.name not in DATASETS:
            raise UserError(unknown_name("dataset", self.name, DATASETS))
        problems = []
        defaults = DataSpec()
        only = {"cifar100": ("root", "download"), "synthetic": ("num_classes", "train_size", "test_size", "seed")}
        for owner, fields in only.items():
            for field in fields:
                if owner != self.name and getattr(self, field) != getattr(defaults, field):
                    problems.append(f"dataset.{field} applies to {owner} only, not to {self.name}")
        if self.name == "cifar100" and not self.root:
            problems.append("dataset.root must name the directory that holds (or will hold) cifar-100-python/")
        minimum = {"num_classes": 2, "train_size": 1, "test_size": 1, "train_subset": 1, "test_subset": 1}
        for field, least in minimum.items():
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                problems.append(f"dataset.{field} must be an integer >= {least}, got {value!r}")
        if problems:
            raise UserError("invalid dataset section: " + "; ".join(problems) + ".")


@dataclass
class ImageData:
    train_images: torch.Tensor  # uint8 (N, 3, 32, 32), CHW
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor  # uint8 (M, 3, 32, 32)
    test_labels: torch.Tensor  # int64 (M,)
    num_classes: int
    mean: tuple[float, float, float]  # normalisation (CIFAR-100's for both datasets)
    std: tuple[float, float, float]

    def to(self, device: torch.device | str) -> ImageData:
        return dataclasses.replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device),
            test_labels=self.test_labels.to(device),
        )


def _subset(images: torch.Tensor, labels: torch.Tensor, keep: int | None, field: str):
    """The first `keep` images; copies so that the full set's memory can be freed."""
    if keep is None:
        return images, labels
    if keep > len(images):
        raise UserError(f"dataset.{field} is {keep} but the split has only {len(images)} images.")
    return images[:keep].clone(), labels[:keep].clone()


def load_dataset(spec: DataSpec) -> ImageData:
    """Load (or generate) the dataset `spec` describes, on the CPU."""
    spec.validate()
    if spec.name == "cifar100":
        train_images, train_labels, test_images, test_labels, num_classes = read_cifar100(spec.root, spec.download)
    else:
        num_classes = spec.num_classes
        train_images, train_labels, test_images, test_labels = make_synthetic(
            spec.seed, num_classes, spec.train_size, spec.test_size
        )
    train_images, train_labels = _subset(train_images, train_labels, spec.train_subset, "train_subset")
    test_images, test_labels = _subset(test_images, test_labels, spec.test_subset, "test_subset")
    return ImageData(
        train_images, train_labels, test_images, test_labels, num_classes, CIFAR100_MEAN, CIFAR100_STD
    )


__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "NUM_VIEWS",
    "DataSpec",
    "EpochPlan",
    "ImageData",
    "apply_views",
    "augment",
    "decode_views",
    "encode_views",
    "epoch_plan",
    "load_dataset",
    "normalise",
    "prepare_test",
]
