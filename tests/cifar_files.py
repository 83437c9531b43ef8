"""Test-only: CIFAR-100 and CIFAR-10 archives written exactly as the original files are, so the real readers are
tested on them.

The datasets cannot be downloaded on the test machine; these writers produce `<root>/cifar-100-python/{train,test,
meta}` and `<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}` in the format of the published
files (Python 2 pickles, protocol 2), and `tar_gz` packs them as the published .tar.gz, which a test's HTTP server
on 127.0.0.1 serves to the real download path.
"""

from __future__ import annotations

import math
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch

from kdsweep.data import cifar10, cifar100
from kdsweep.data.cifar_format import _RECONSTRUCT, PIXELS
from kdsweep.data.cifar100 import FINE_PER_COARSE

class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its per-type dispatch table can be extended
    """Protocol 2 as Python 2's cPickle wrote the original files.

    bytes become Python 2 `str` opcodes (SHORT_BINSTRING/BINSTRING), which Python 3 reads back as str with
    encoding='latin1' (torchvision) and as bytes with encoding='bytes' (the dataset page's snippet, d[b'data']);
    Python 3's own protocol 2 would write `_codecs.encode(...)` calls instead. Arrays name numpy.core.multiarray,
    as numpy 1.x did, which every numpy version can load.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _split_entries(images, labels, fine_names: list[bytes], batch_label: bytes, cifar10_keys: bool = False) -> dict:
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels)
    if images.dtype != torch.uint8 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"images must be uint8 (N, 3, 32, 32), got {images.dtype} {tuple(images.shape)}")
    if labels.shape != images.shape[:1] or (len(labels) and not 0 <= labels.min() <= labels.max() < len(fine_names)):
        raise ValueError(f"labels must be {len(images)} integers in [0, {len(fine_names)})")
    fine = [int(label) for label in labels.tolist()]
    entries = {
        b"batch_label": batch_label,
        b"filenames": [fine_names[label] + b"_s_%06d.png" % i for i, label in enumerate(fine)],
        b"data": np.ascontiguousarray(images.cpu().reshape(len(images), PIXELS).numpy()),
    }
    if cifar10_keys:
        return {**entries, b"labels": fine}
    return {**entries, b"fine_labels": fine, b"coarse_labels": [label // FINE_PER_COARSE for label in fine]}


def write_cifar100_archive(root, train_images, train_labels, test_images, test_labels, num_classes: int = 100) -> Path:
    """Write `<root>/cifar-100-python/{train,test,meta}` in the original format; returns that folder.

    Images are uint8 (N, 3, 32, 32), labels integers in [0, num_classes). Class names are placeholders
    (class_000, ...), superclasses group consecutive classes by 5 (the real grouping differs; kdsweep ignores it).
    """
    folder = Path(root) / cifar100.FORMAT.folder
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = [b"class_%03d" % i for i in range(num_classes)]
    coarse_names = [b"superclass_%02d" % i for i in range(math.ceil(num_classes / FINE_PER_COARSE))]
    _write_pickle(folder / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": coarse_names})
    _write_pickle(folder / "train", _split_entries(train_images, train_labels, fine_names, b"training batch 1 of 1"))
    _write_pickle(folder / "test", _split_entries(test_images, test_labels, fine_names, b"testing batch 1 of 1"))
    return folder


def write_cifar10_archive(root, train_images, train_labels, test_images, test_labels) -> Path:
    """Write `<root>/cifar-10-batches-py/` in the original format (the training images spread over five batch
    files, as the original's 5 x 10000); returns that folder. Class names are placeholders (class_0, ...)."""
    folder = Path(root) / cifar10.FORMAT.folder
    folder.mkdir(parents=True, exist_ok=True)
    names = [b"class_%d" % i for i in range(10)]
    _write_pickle(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072})
    bounds = np.linspace(0, len(train_images), 6).round().astype(int)
    for i in range(5):
        lo, hi = bounds[i], bounds[i + 1]
        _write_pickle(folder / f"data_batch_{i + 1}", _split_entries(
            train_images[lo:hi], train_labels[lo:hi], names, b"training batch %d of 5" % (i + 1), cifar10_keys=True))
    _write_pickle(folder / "test_batch",
                  _split_entries(test_images, test_labels, names, b"testing batch 1 of 1", cifar10_keys=True))
    return folder


def tar_gz(folder: Path, archive: Path) -> Path:
    """`folder` packed as the published archives are: a .tar.gz whose top entry is the folder itself."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive
