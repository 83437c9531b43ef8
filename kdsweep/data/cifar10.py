"""CIFAR-10 (torchvision's on-disk format, `<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,
batches.meta}`): 10 classes, 50000 training images in five files and 10000 test images, 32x32 RGB."""

from __future__ import annotations

from kdsweep.data.base import Sizes
from kdsweep.data.cifar_format import CifarDataset, CifarFormat
from kdsweep.data.geometry import Geometry
from kdsweep.data.registry import register_dataset

FORMAT = CifarFormat(
    title="CIFAR-10", folder="cifar-10-batches-py", train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",), meta_file="batches.meta", label_key="labels", names_key="label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a",
)


@register_dataset("cifar10")
class CIFAR10(CifarDataset):
    summary = "CIFAR-10: 10 classes, 32 px, 50000 + 10000 images (torchvision's files; download: true)"
    FORMAT = FORMAT
    # Channel statistics of CIFAR-10's 50000 training images (population std). Some codebases normalise with
    # (0.2023, 0.1994, 0.2010) instead, a miscomputed value that spread by copying; it only rescales the inputs.
    GEOMETRY = Geometry(image_size=32, channels=3, padding=4, mean=(0.4914, 0.4822, 0.4465),
                        std=(0.2470, 0.2435, 0.2616))
    SIZES = Sizes(num_classes=10, train_images=50000, test_images=10000)
