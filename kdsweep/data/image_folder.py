"""Images in torchvision's ImageFolder layout, one folder per class, at one fixed size (e.g. Tiny-ImageNet, 64 px):

    <root>/<train_dir>/<class>/<image>.png|jpg|...        <root>/<test_dir>/<class>/<image>...

Classes are the training split's folder names in sorted order (ImageFolder's rule), so label i names the same class
as torchvision would; the test split may hold a subset of them. Every image is decoded once into memory as uint8
RGB (Tiny-ImageNet's 110000 images: 1.35 GB), and must already be image_size x image_size unless `resize: true`
(bilinear, PIL). Tiny-ImageNet's own archive keeps its validation images in one folder with a labels file:
docs/datasets.md shows the two-line move into this layout.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsweep.data.base import Dataset, Sizes, Splits, Subsets
from kdsweep.data.geometry import Geometry
from kdsweep.data.registry import register_dataset
from kdsweep.errors import UserError
from kdsweep.typed_config import knob

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's list
SIZE_STEP = 32  # px: the zoo's models halve a map up to five times and pool globally, so sizes are multiples of 32
DECODE_THREADS = 8  # PIL decodes outside the GIL
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageFolderConfig(Subsets):
    root: str | None = knob(None, doc="folder holding the split folders, relative to the working directory")
    train_dir: str = knob("train", doc="training split folder under root")
    test_dir: str = knob("val", doc="test split folder under root")
    image_size: int = knob(64, ge=SIZE_STEP, doc="px, square; a multiple of 32")
    padding: int = knob(4, ge=0, doc="px of zero border RandomCrop adds on each side")
    mean: tuple[float, float, float] = knob(IMAGENET_MEAN, doc="per-channel normalisation (ImageNet's by default)")
    std: tuple[float, float, float] = knob(IMAGENET_STD, gt=0, doc="per-channel normalisation")
    resize: bool = knob(False, doc="resize images of another size (bilinear) instead of refusing them")


@register_dataset("image_folder")
class ImageFolder(Dataset):
    Config = ImageFolderConfig
    summary = "one folder per class (torchvision's ImageFolder layout), any fixed size, e.g. Tiny-ImageNet 64 px"
    paths = ("root",)
    not_identity = ("root",)

    @classmethod
    def geometry(cls, config) -> Geometry:
        return Geometry(config.image_size, 3, config.padding, tuple(config.mean), tuple(config.std))

    @classmethod
    def config_problems(cls, config) -> list[tuple[str, str]]:
        found = []
        if not config.root:
            found.append(("root", f"required: the folder that holds {config.train_dir}/ and {config.test_dir}/"))
        if config.image_size % SIZE_STEP:
            found.append(("image_size", f"expected a multiple of {SIZE_STEP} px (the models halve their maps up to "
                                        f"five times), got {config.image_size}"))
        if config.padding >= config.image_size:
            found.append(("padding", f"expected less than image_size ({config.image_size}), got {config.padding}"))
        return found

    @classmethod
    def prepare(cls, config, announce=print) -> None:
        _class_files(config, config.train_dir, None)
        _class_files(config, config.test_dir, None)

    @classmethod
    def sizes(cls, config) -> Sizes | None:
        try:
            train = _class_files(config, config.train_dir, None)
            test = _class_files(config, config.test_dir, tuple(train))
        except UserError:
            return None
        return Sizes(len(train), sum(map(len, train.values())), sum(map(len, test.values())))

    @classmethod
    def load(cls, config) -> Splits:
        train = _class_files(config, config.train_dir, None)
        names = tuple(train)
        test = _class_files(config, config.test_dir, names)
        return Splits(*_decode(config, train, names), *_decode(config, test, names), names)


def _layout_help(config) -> str:
    root = Path(config.root).expanduser()
    return (f"kdsweep reads torchvision's ImageFolder layout: {root / config.train_dir}/<class>/<image> and "
            f"{root / config.test_dir}/<class>/<image> (train_dir, test_dir and root in the dataset section), "
            f"with image files ending in {', '.join(EXTENSIONS)}. docs/datasets.md shows how to lay out "
            f"Tiny-ImageNet.")


def _class_files(config, split: str, known: tuple[str, ...] | None) -> dict[str, list[Path]]:
    """{class name: sorted image paths} of one split folder; `known` (the training classes) bounds the test split."""
    folder = Path(config.root).expanduser() / split
    if not folder.is_dir():
        raise UserError(f"image_folder: {folder} is not a folder. " + _layout_help(config))
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"image_folder: {folder} has no class folders. " + _layout_help(config))
    if known is not None:
        foreign = [c for c in classes if c not in known]
        if foreign:
            raise UserError(f"image_folder: {folder} has classes the training split lacks: "
                            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}. " + _layout_help(config))
    files = {c: sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in EXTENSIONS) for c in classes}
    empty = [c for c, paths in files.items() if not paths]
    if empty and known is None:
        raise UserError(f"image_folder: class folders without images in {folder}: {', '.join(empty[:5])}. "
                        + _layout_help(config))
    return files


def _decode(config, files: dict[str, list[Path]], names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (uint8 (N, 3, S, S), int64 (N,)), images in class-then-file-name order."""
    paths = [p for c in files for p in files[c]]
    labels = torch.tensor([names.index(c) for c in files for _ in files[c]], dtype=torch.long)
    size = config.image_size
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        decoded = list(pool.map(lambda p: _read_image(p, size, config.resize), paths))
    wrong = [(p, found) for p, (_, found) in zip(paths, decoded) if found is not None]
    if wrong:
        listed = "; ".join(f"{p} is {w}x{h}" for p, (w, h) in wrong[:3])
        raise UserError(f"image_folder: {len(wrong)} image(s) are not {size}x{size} px ({listed}"
                        f"{' ...' if len(wrong) > 3 else ''}). Set `resize: true` in the dataset section to resize "
                        f"them when loading, or set image_size to their size.")
    images = np.stack([pixels for pixels, _ in decoded]) if decoded else np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def _read_image(path: Path, size: int, resize: bool):
    """-> (uint8 (S, S, 3) HWC pixels or None, None or the (width, height) of an image of the wrong size)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                if not resize:
                    return None, image.size
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8), None
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"image_folder: {path} is not a readable image ({type(err).__name__}: {err}).") from None
