"""Data: registered datasets (one file each) held as uint8 tensors and augmented on the device.

    data = load_dataset(parse_dataset({"name": "cifar100", "root": "~/data"})).to("cuda")  # resident, ~180 MB
    plan = epoch_plan(seed, epoch, len(data.train_labels), data.geometry.num_views).to("cuda")  # same everywhere
    for idx, views in plan.batches(64):
        x = augment(data.train_images[idx], views, data.geometry)           # float32 (64, 3, 32, 32)

Shipped datasets: cifar100, cifar10, image_folder and synthetic (`kdsweep datasets` lists them with their knobs;
docs/extending.md shows how to add one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kdsweep.data.augment import apply_views, augment, decode_views, encode_views, normalise, prepare_test
from kdsweep.data.base import Dataset, Sizes, Splits, Subsets
from kdsweep.data.geometry import CIFAR100_GEOMETRY, CIFAR100_MEAN, CIFAR100_STD, Geometry
from kdsweep.data.registry import DataSpec, dataset_class, dataset_problems, datasets, parse_dataset, register_dataset
from kdsweep.data.stream import EpochPlan, epoch_plan
from kdsweep.errors import UserError


@dataclass
class ImageData:
    train_images: torch.Tensor  # uint8 (N, C, S, S), CHW
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor  # uint8 (M, C, S, S)
    test_labels: torch.Tensor  # int64 (M,)
    num_classes: int
    geometry: Geometry  # size, crop padding and normalisation

    @property
    def mean(self) -> tuple[float, ...]:
        return self.geometry.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.geometry.std

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
    """Load (or generate) the dataset `spec` describes, on the CPU, and check it matches its declared geometry."""
    geometry = spec.geometry
    splits = spec.dataset.load(spec.config)
    shape = (geometry.channels, geometry.image_size, geometry.image_size)
    for name in ("train_images", "test_images"):
        images = getattr(splits, name)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape:
            raise UserError(f"dataset {spec.name} loaded {name} as {images.dtype} {tuple(images.shape)}, but its "
                            f"geometry says uint8 (N, {', '.join(map(str, shape))}).")
    train_images, train_labels = _subset(splits.train_images, splits.train_labels, spec.train_subset, "train_subset")
    test_images, test_labels = _subset(splits.test_images, splits.test_labels, spec.test_subset, "test_subset")
    return ImageData(train_images, train_labels, test_images, test_labels, len(splits.class_names), geometry)


__all__ = [
    "CIFAR100_GEOMETRY", "CIFAR100_MEAN", "CIFAR100_STD", "DataSpec", "Dataset", "EpochPlan", "Geometry",
    "ImageData", "Sizes", "Splits", "Subsets", "apply_views", "augment", "dataset_class", "dataset_problems",
    "datasets", "decode_views", "encode_views", "epoch_plan", "load_dataset", "normalise", "parse_dataset",
    "prepare_test", "register_dataset",
]
