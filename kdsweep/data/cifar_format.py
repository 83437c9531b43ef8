"""The CIFAR datasets' on-disk format (torchvision's layout), shared by cifar10.py and cifar100.py.

Each file is a pickled dict written by Python 2 (protocol 2): a batch holds b'data', (N, 3072) uint8 rows (1024
red, 1024 green, 1024 blue values, each row-major: CHW order), a label list (b'labels' in CIFAR-10, b'fine_labels'
in CIFAR-100), b'filenames' and b'batch_label'; the meta file names the classes.

Pickles can run arbitrary code when loaded, so the files are read with an unpickler that only resolves the few
globals these files use (numpy array reconstruction, builtin containers) and refuses anything else. torchvision is
used only to download (its reader verifies MD5 sums that a fixture archive cannot match, and unpickles freely).
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsweep.data.base import Dataset, Sizes, Splits, Subsets
from kdsweep.data.geometry import Geometry
from kdsweep.errors import UserError
from kdsweep.typed_config import knob

PIXELS = 3 * 32 * 32  # values per stored row

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


@dataclass(frozen=True)
class CifarFormat:
    title: str  # "CIFAR-100", in messages
    folder: str  # the archive's top folder under the dataset root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str  # per-image labels in a batch
    names_key: str  # class names in the meta file
    url: str  # the official archive (torchvision downloads the same file)
    md5: str  # of the archive, checked after the download

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)

    def layout_help(self, root: Path) -> str:
        """The expected layout and how to get it, appended to every error about the dataset directory."""
        names = f"{', '.join(self.files[:-1])} and {self.files[-1]}"
        return (
            f"kdsweep reads {self.title} in torchvision's layout: {root / self.folder}/{names} "
            f"(<root>/{self.folder}/..., with root = {root} from the dataset section). To get it, set "
            f"`download: true` in the dataset section (needs internet), or download {self.url} and extract it "
            f"into {root}."
        )

    def missing(self, root: Path) -> list[Path]:
        return [root / self.folder / name for name in self.files if not (root / self.folder / name).is_file()]


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED_GLOBALS`: a dataset file can build arrays and containers, never call anything else."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _read_pickle(fmt: CifarFormat, path: Path, root: Path) -> dict:
    """Unpickle one file as torchvision does (encoding='latin1'), keys as str, or raise a UserError."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as e:
        raise UserError(
            f"refusing to load {path}: it references {e}, which no {fmt.title} file contains (a pickle can run code "
            f"when loaded, so only numpy arrays and plain containers are accepted). Replace it with a genuine copy. "
            + fmt.layout_help(root)
        ) from None
    except Exception as e:  # any parse failure (truncated, not a pickle, bad opcode...) means a corrupt file
        raise UserError(
            f"{path} is not a readable {fmt.title} file ({type(e).__name__}: {e}). " + fmt.layout_help(root)
        ) from None
    if not isinstance(obj, dict):
        found = type(obj).__name__
        raise UserError(f"{path} holds a {found}, not the dict a {fmt.title} file holds. " + fmt.layout_help(root))
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(fmt: CifarFormat, entries: dict, key: str, path: Path, root: Path):
    if key not in entries:
        raise UserError(f"{path} has no '{key}' entry (found: {', '.join(map(str, entries))}). "
                        + fmt.layout_help(root))
    return entries[key]


def _read_batch(fmt: CifarFormat, path: Path, root: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> (uint8 (N, 3, 32, 32) images, int64 (N,) labels)."""
    entries = _read_pickle(fmt, path, root)
    data = _field(fmt, entries, "data", path, root)
    labels = _field(fmt, entries, fmt.label_key, path, root)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS):
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(
            f"{path}: 'data' must be a uint8 array of shape (N, {PIXELS}), found a {found}. " + fmt.layout_help(root)
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: '{fmt.label_key}' is not a list of integers. " + fmt.layout_help(root)) from None
    if labels.shape != (len(data),) or (labels.size and not (0 <= labels.min() and labels.max() < num_classes)):
        raise UserError(
            f"{path}: '{fmt.label_key}' must hold {len(data)} integers in [0, {num_classes}) (one per image, "
            f"{num_classes} classes named in {fmt.meta_file}), found shape {labels.shape}. " + fmt.layout_help(root)
        )
    if not data.flags.writeable:  # arrays unpickled from bytes are read-only; torch wants writable memory
        data = data.copy()
    return torch.from_numpy(data).view(len(data), 3, 32, 32), torch.from_numpy(labels)


def download(fmt: CifarFormat, root: Path) -> None:
    """Fetch and extract the official archive into `root` with torchvision's downloader (MD5-checked)."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(fmt.url, str(root), filename=fmt.url.rsplit("/", 1)[-1], md5=fmt.md5)
    except Exception as e:  # network, disk or checksum failure: all fixable by the user
        raise UserError(
            f"could not download {fmt.title} into {root} ({type(e).__name__}: {e}). " + fmt.layout_help(root)
        ) from None


def prepare(fmt: CifarFormat, root: str | Path, allow_download: bool, announce=None) -> None:
    """Download when files are missing and allowed; a UserError naming the missing files otherwise."""
    root = Path(root).expanduser()
    if fmt.missing(root) and allow_download:
        if announce:
            announce(f"kdsweep: downloading {fmt.title} into {root} (once, before any trial starts)")
        download(fmt, root)
    missing = fmt.missing(root)
    if missing:
        where = f"missing {', '.join(map(str, missing))}" if root.is_dir() else f"the directory {root} does not exist"
        raise UserError(f"{fmt.title} not found: {where}. " + fmt.layout_help(root))


def class_names(fmt: CifarFormat, root: str | Path) -> tuple[str, ...]:
    root = Path(root).expanduser()
    meta = root / fmt.folder / fmt.meta_file
    names = _field(fmt, _read_pickle(fmt, meta, root), fmt.names_key, meta, root)
    if not isinstance(names, list) or not names:
        raise UserError(f"{meta}: '{fmt.names_key}' must be a non-empty list. " + fmt.layout_help(root))
    return tuple(map(str, names))


def read(fmt: CifarFormat, root: str | Path, allow_download: bool = False):
    """-> (train_images, train_labels, test_images, test_labels, class names)."""
    prepare(fmt, root, allow_download)
    root = Path(root).expanduser()
    names = class_names(fmt, root)

    def split(files: tuple[str, ...]):
        parts = [_read_batch(fmt, root / fmt.folder / name, root, len(names)) for name in files]
        return torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0], \
            torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]

    return (*split(fmt.train_files), *split(fmt.test_files), names)


@dataclass(frozen=True)
class CifarFilesConfig(Subsets):
    root: str | None = knob(None, doc="folder that holds (or will hold) the extracted archive, relative to the "
                                      "working directory")
    download: bool = knob(False, doc="fetch the archive with torchvision when it is missing (needs internet)")


class CifarDataset(Dataset):
    """A dataset in this format: subclasses set FORMAT, GEOMETRY and SIZES, and register themselves."""

    FORMAT: CifarFormat
    GEOMETRY: Geometry
    SIZES: Sizes
    Config = CifarFilesConfig
    paths = ("root",)
    not_identity = ("root", "download")

    @classmethod
    def geometry(cls, config) -> Geometry:
        return cls.GEOMETRY

    @classmethod
    def sizes(cls, config) -> Sizes:
        return cls.SIZES

    @classmethod
    def config_problems(cls, config) -> list[tuple[str, str]]:
        if not config.root:
            return [("root", f"required: the folder that holds (or will hold) {cls.FORMAT.folder}/")]
        return []

    @classmethod
    def prepare(cls, config, announce=print) -> None:
        prepare(cls.FORMAT, config.root, config.download, announce)

    @classmethod
    def load(cls, config) -> Splits:
        return Splits(*read(cls.FORMAT, config.root, config.download))
