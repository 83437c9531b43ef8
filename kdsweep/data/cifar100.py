"""CIFAR-100 in torchvision's on-disk format: `<root>/cifar-100-python/{train,test,meta}`.

Each file is a pickled dict written by Python 2 (protocol 2): `train`/`test` hold b'data' (N, 3072) uint8 rows
(1024 red, 1024 green, 1024 blue values, each row-major: CHW order), b'fine_labels', b'coarse_labels',
b'filenames', b'batch_label'; `meta` holds b'fine_label_names' and b'coarse_label_names'.

Pickles can run arbitrary code when loaded, so the files are read with an unpickler that only resolves the few
globals these files use (numpy array reconstruction, builtin containers) and refuses anything else. torchvision is
used only to download (its reader verifies MD5 sums that a fixture archive cannot match, and unpickles freely).
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch

from kdsweep.errors import UserError

FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
PIXELS = 3 * 32 * 32  # values per stored row
FINE_PER_COARSE = 5  # CIFAR-100 groups its 100 classes into 20 superclasses of 5

# numpy's array-unpickling function, wherever this numpy version keeps it (numpy.core or numpy._core).
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_BUILTIN_CONTAINERS = {c.__name__: c for c in (dict, list, tuple, set, frozenset, bytearray)}
_ALLOWED_GLOBALS = {
    # ndarray: written by numpy 1.x (the original files) and by numpy 2.x.
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes protocol-2 bytes as _codecs.encode(text, 'latin1'), a pure function.
    ("_codecs", "encode"): codecs.encode,
    **{(module, name): c for module in ("builtins", "__builtin__") for name, c in _BUILTIN_CONTAINERS.items()},
}


def layout_help(root: Path) -> str:
    """The expected layout and how to get it, appended to every error about the dataset directory."""
    return (
        f"kdsweep reads CIFAR-100 in torchvision's layout: {root / FOLDER}/train, test and meta "
        f"(<root>/{FOLDER}/train, test, meta, with root = {root} from the dataset section). To get it, set "
        f"`download: true` in the dataset section (needs internet), or download {URL} and extract it into {root}."
    )


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED_GLOBALS`: a dataset file can build arrays and containers, never call anything else."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _read_pickle(path: Path, root: Path) -> dict:
    """Unpickle one file as torchvision does (encoding='latin1'), keys as str, or raise a UserError."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as e:
        raise UserError(
            f"refusing to load {path}: it references {e}, which no CIFAR-100 file contains (a pickle can run code "
            f"when loaded, so only numpy arrays and plain containers are accepted). Replace it with a genuine copy. "
            + layout_help(root)
        ) from None
    except Exception as e:  # any parse failure (truncated, not a pickle, bad opcode...) means a corrupt file
        raise UserError(
            f"{path} is not a readable CIFAR-100 file ({type(e).__name__}: {e}). " + layout_help(root)
        ) from None
    if not isinstance(obj, dict):
        found = type(obj).__name__
        raise UserError(f"{path} holds a {found}, not the dict a CIFAR-100 file holds. " + layout_help(root))
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(entries: dict, key: str, path: Path, root: Path):
    if key not in entries:
        raise UserError(f"{path} has no '{key}' entry (found: {', '.join(map(str, entries))}). " + layout_help(root))
    return entries[key]


def _read_split(path: Path, root: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One of `train`/`test` -> (uint8 (N, 3, 32, 32) images, int64 (N,) fine labels)."""
    entries = _read_pickle(path, root)
    data = _field(entries, "data", path, root)
    labels = _field(entries, "fine_labels", path, root)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS):
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(
            f"{path}: 'data' must be a uint8 array of shape (N, {PIXELS}), found a {found}. " + layout_help(root)
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: 'fine_labels' is not a list of integers. " + layout_help(root)) from None
    if labels.shape != (len(data),) or (labels.size and not (0 <= labels.min() and labels.max() < num_classes)):
        raise UserError(
            f"{path}: 'fine_labels' must hold {len(data)} integers in [0, {num_classes}) (one per image, "
            f"{num_classes} classes named in meta), found shape {labels.shape}. " + layout_help(root)
        )
    if not data.flags.writeable:  # arrays unpickled from bytes are read-only; torch wants writable memory
        data = data.copy()
    images = torch.from_numpy(data).view(len(data), 3, 32, 32)
    return images, torch.from_numpy(labels)


def download_cifar100(root: Path) -> None:
    """Fetch and extract the official archive into `root` with torchvision's downloader (MD5-checked)."""
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(CIFAR100.url, str(root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5)
    except Exception as e:  # network, disk or checksum failure: all fixable by the user
        raise UserError(
            f"could not download CIFAR-100 into {root} ({type(e).__name__}: {e}). " + layout_help(root)
        ) from None


def read_cifar100(root: str | Path, download: bool = False):
    """-> (train_images, train_labels, test_images, test_labels, num_classes); num_classes = len(fine_label_names)."""
    root = Path(root).expanduser()
    folder = root / FOLDER
    missing = [folder / name for name in FILES if not (folder / name).is_file()]
    if missing and download:
        download_cifar100(root)
        missing = [folder / name for name in FILES if not (folder / name).is_file()]
    if missing:
        where = f"missing {', '.join(map(str, missing))}" if root.is_dir() else f"the directory {root} does not exist"
        raise UserError(f"CIFAR-100 not found: {where}. " + layout_help(root))
    names = _field(_read_pickle(folder / "meta", root), "fine_label_names", folder / "meta", root)
    if not isinstance(names, list) or not names:
        raise UserError(f"{folder / 'meta'}: 'fine_label_names' must be a non-empty list. " + layout_help(root))
    train_images, train_labels = _read_split(folder / "train", root, len(names))
    test_images, test_labels = _read_split(folder / "test", root, len(names))
    return train_images, train_labels, test_images, test_labels, len(names)
