"""What the rest of kdsweep needs to know about a dataset's images before loading any: size, channels, the crop
padding of the training augmentation and the normalisation.

The augmentation is RandomCrop(size, padding) + RandomHorizontalFlip, which gives every image exactly
(2 * padding + 1)^2 * 2 discrete views (`kdsweep.data.augment`); the teacher cache stores one target per view, the
epoch plan draws views uniformly from them, and the models' spatial sizes follow from `image_size`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    image_size: int  # px, square images (height = width)
    channels: int  # 3 for RGB
    padding: int  # px of zero border RandomCrop adds on each side before cropping back to image_size
    mean: tuple[float, ...]  # per-channel normalisation, in [0, 1] pixel units (torchvision Normalize)
    std: tuple[float, ...]

    @property
    def offsets(self) -> int:
        """Crop offsets per axis: 0..2 * padding."""
        return 2 * self.padding + 1

    @property
    def num_views(self) -> int:
        """Distinct augmented images per source image: offsets^2 crops x 2 flips (162 for CIFAR's padding 4)."""
        return 2 * self.offsets * self.offsets


# CIFAR-100 training-set channel statistics (the reference's Normalize).
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR100_GEOMETRY = Geometry(image_size=32, channels=3, padding=4, mean=CIFAR100_MEAN, std=CIFAR100_STD)
