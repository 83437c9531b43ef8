"""The reference augmentation as exact tensor ops on any device.

The reference pipeline is torchvision's
    Compose([RandomCrop(S, padding=p), RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])
RandomCrop with zero padding p picks the crop's top/left offset (dy, dx) in 0..2p of the (S + 2p)^2 padded image and
the flip is a coin toss, so every augmented image is one of exactly (2p + 1)^2 * 2 discrete "views" of its source
(CIFAR, S = 32 and p = 4: 9 * 9 * 2 = 162):

    view = flip * (2p + 1)^2 + dy * (2p + 1) + dx        (dy, dx in 0..2p, flip in {0, 1})

Because views are discrete, a teacher's outputs can be cached per (image, view) and reused exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from kdsweep.data.geometry import Geometry


def encode_views(dy, dx, flip, padding: int):
    """(dy, dx, flip) -> view id for crop padding `padding`; works on ints and integer tensors alike."""
    offsets = 2 * padding + 1
    return flip * (offsets * offsets) + dy * offsets + dx


def decode_views(views, padding: int):
    """view id -> (dy, dx, flip); the inverse of `encode_views`."""
    offsets = 2 * padding + 1
    flip, cell = views // (offsets * offsets), views % (offsets * offsets)
    return cell // offsets, cell % offsets, flip


def apply_views(images: torch.Tensor, views: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop + flip a batch: uint8 (B, C, S, S) and int (B,) views -> uint8 (B, C, S, S), on their device.

    out[b, c, y, x] = padded[b, c, dy + y, dx + (S - 1 - x if flip else x)], with `padded` the image inside a
    `padding` px zero border: RandomCrop's crop followed by RandomHorizontalFlip's mirror of that crop. One gather,
    no per-image loop.
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"apply_views expects square (B, C, S, S) images, got {tuple(images.shape)}")
    if views.shape != images.shape[:1]:
        raise ValueError(f"apply_views needs one view per image: {tuple(views.shape)} for {images.shape[0]} images")
    batch, channels, size = images.shape[:3]
    padded_size = size + 2 * padding
    dy, dx, flip = decode_views(views.to(device=images.device, dtype=torch.long), padding)
    padded = torch.nn.functional.pad(images, (padding,) * 4)  # zero fill, (B, C, S + 2p, S + 2p)
    pixel = torch.arange(size, device=images.device)
    rows = dy[:, None] + pixel  # (B, S) source row in the padded image
    cols = dx[:, None] + torch.where(flip[:, None].bool(), size - 1 - pixel, pixel)  # (B, S) source column
    index = (rows[:, :, None] * padded_size + cols[:, None, :]).view(batch, 1, size * size)
    out = padded.flatten(2).gather(2, index.expand(batch, channels, size * size))
    return out.view(batch, channels, size, size)


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


def augment(images: torch.Tensor, views: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Training input: the reference augmentation of `images` at `views`, normalised (float32)."""
    return normalise(apply_views(images, views, geometry.padding), geometry.mean, geometry.std)


def prepare_test(images: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Test input: normalisation only, as the reference's test transform."""
    return normalise(images, geometry.mean, geometry.std)
