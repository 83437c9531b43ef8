"""CIFAR-100 (torchvision's on-disk format, `<root>/cifar-100-python/{train,test,meta}`): 100 classes, 50000
training and 10000 test images of 32x32 RGB. The study's dataset; the reading is shared with CIFAR-10
(cifar_format.py)."""

from __future__ import annotations

from kdsweep.data.base import Sizes
from kdsweep.data.cifar_format import CifarDataset, CifarFormat
from kdsweep.data.geometry import CIFAR100_GEOMETRY
from kdsweep.data.registry import register_dataset

FORMAT = CifarFormat(
    title="CIFAR-100", folder="cifar-100-python", train_files=("train",), test_files=("test",), meta_file="meta",
    label_key="fine_labels", names_key="fine_label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
)
FINE_PER_COARSE = 5  # CIFAR-100 groups its 100 classes into 20 superclasses of 5
# kdsweep 0.1 hashed a flat dataset record whose synthetic-only fields CIFAR-100 runs left at these defaults;
# keeping them in the identity keeps every CIFAR-100 run id (and so every finished run) of earlier versions.
LEGACY_IDENTITY = {"num_classes": 100, "train_size": 50000, "test_size": 10000, "seed": 0}


@register_dataset("cifar100")
class CIFAR100(CifarDataset):
    summary = "CIFAR-100: 100 classes, 32 px, 50000 + 10000 images (torchvision's files; download: true)"
    FORMAT = FORMAT
    GEOMETRY = CIFAR100_GEOMETRY
    SIZES = Sizes(num_classes=100, train_images=50000, test_images=10000)

    @classmethod
    def identity(cls, config) -> dict:
        return {**LEGACY_IDENTITY, **super().identity(config)}
