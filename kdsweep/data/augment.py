"""The reference augmentation as exact tensor ops on any device.

The reference pipeline is torchvision's
    Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])
RandomCrop with zero padding 4 picks the crop's top/left offset (dy, dx) in 0..8 of the 40x40 padded image and the
flip is a coin toss, so every augmented image is one of exactly 9 * 9 * 2 = 162 discrete "views" of its source:

    view = flip * 81 + dy * 9 + dx        (dy, dx in 0..8, flip in {0, 1})

Because views are discrete, a teacher's outputs can be cached per (image, view) and reused exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

SIZE = 32  # CIFAR image side (px)
PAD = 4  # RandomCrop(32, padding=4): zero border on each side (px)
PADDED = SIZE + 2 * PAD  # 40 px
OFFSETS = 2 * PAD + 1  # 9 possible crop offsets per axis
NUM_VIEWS = 2 * OFFSETS * OFFSETS  # 162


def encode_views(dy, dx, flip):
    """(dy, dx, flip) -> view id; works on ints and integer tensors alike."""
    return flip * (OFFSETS * OFFSETS) + dy * OFFSETS + dx


def decode_views(views):
    """view id -> (dy, dx, flip); the inverse of `encode_views`."""
    flip, cell = views // (OFFSETS * OFFSETS), views % (OFFSETS * OFFSETS)
    return cell // OFFSETS, cell % OFFSETS, flip


def apply_views(images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Crop + flip a batch: uint8 (B, C, 32, 32) and int (B,) views -> uint8 (B, C, 32, 32), on their device.

    out[b, c, y, x] = padded[b, c, dy + y, dx + (31 - x if flip else x)], with `padded` the image inside a 4 px zero
    border: RandomCrop's crop followed by RandomHorizontalFlip's mirror of that crop. One gather, no per-image loop.
    """
    if images.dim() != 4 or images.shape[-2:] != (SIZE, SIZE):
        raise ValueError(f"apply_views expects (B, C, {SIZE}, {SIZE}) images, got {tuple(images.shape)}")
    if views.shape != images.shape[:1]:
        raise ValueError(f"apply_views needs one view per image: {tuple(views.shape)} for {images.shape[0]} images")
    batch, channels = images.shape[:2]
    dy, dx, flip = decode_views(views.to(device=images.device, dtype=torch.long))
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))  # zero fill, (B, C, 40, 40)
    pixel = torch.arange(SIZE, device=images.device)
    rows = dy[:, None] + pixel  # (B, 32) source row in the padded image
    cols = dx[:, None] + torch.where(flip[:, None].bool(), SIZE - 1 - pixel, pixel)  # (B, 32) source column
    index = (rows[:, :, None] * PADDED + cols[:, None, :]).view(batch, 1, SIZE * SIZE)
    out = padded.flatten(2).gather(2, index.expand(batch, channels, SIZE * SIZE))
    return out.view(batch, channels, SIZE, SIZE)


@functools.lru_cache(maxsize=16)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(C, 256) float32: the normalised value of every uint8 pixel value in every channel.

    Computed on the CPU with exactly torchvision's ops and order (ToTensor: float32, / 255; Normalize: - mean, / std
    with float32 mean/std), so a lookup reproduces torchvision bit for bit on any device. Arithmetic on the GPU would
    not always: CUDA divides by a CPU scalar as a multiply by its reciprocal, which can differ in the last bit.
    """
    values = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)
    mean_t = torch.as_tensor(mean, dtype=torch.float32)[:, None]
    std_t = torch.as_tensor(std, dtype=torch.float32)[:, None]
    return (values[None, :] - mean_t).div(std_t).to(device)


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32, bit-identical to torchvision ToTensor() + Normalize(mean, std)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"normalise expects uint8 images, got {images.dtype}")
    table = _normalise_table(tuple(map(float, mean)), tuple(map(float, std)), images.device)
    if images.shape[1] != table.shape[0]:
        raise ValueError(f"{images.shape[1]} image channels but {table.shape[0]} mean/std entries")
    channel = torch.arange(table.shape[0], device=images.device).view(1, -1, 1, 1)
    return table[channel, images.long()]


def augment(images: torch.Tensor, views: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Training input: the reference augmentation of `images` at `views`, normalised (float32)."""
    return normalise(apply_views(images, views), mean, std)


def prepare_test(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Test input: normalisation only, as the reference's test transform."""
    return normalise(images, mean, std)
