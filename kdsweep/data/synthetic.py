"""A generated, learnable stand-in for CIFAR: 32x32 RGB textures whose class lives in colour and wave content.

Each class has a base colour and a few plane waves (spatial frequency, orientation, per-channel weights). An image
of class c is its colour plus its waves at a random phase, with per-image jitter of wave strength, frequency and
orientation, two random distractor waves, a brightness/colour shift and pixel noise. The random phase makes the
class a property of the texture rather than of positions, so it survives the 4 px crops and flips of the training
augmentation (a flip mirrors a wave's orientation, a pattern the network learns from flipped training views).

Everything is drawn from generators keyed by (seed, classes) for the class prototypes and by (seed, split, chunk)
for the images, in chunks of whole label blocks: image i of a split is the same for every split size, and each
block of `num_classes` consecutive images holds every class once (balanced labels at any prefix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdsweep.data.base import Dataset, Sizes, Splits, Subsets
from kdsweep.data.geometry import CIFAR100_GEOMETRY, Geometry
from kdsweep.data.registry import register_dataset
from kdsweep.data.stream import seeded_generator
from kdsweep.typed_config import MAX_SEED, knob

SIZE = 32  # px
# At most a million images per split: 3 GB as uint8 at 32 px, already more than a trial should hold in memory.
MAX_IMAGES = 1_000_000
CLASS_WAVES = 3  # plane waves that carry a class's texture
DISTRACTOR_WAVES = 2  # per-image waves unrelated to the class
IMAGES_PER_CHUNK = 1024  # generation granularity (rounded up to whole label blocks); bounds float32 scratch memory

# Intensities are in [0, 1] pixel units, frequencies in cycles per 32 px image.
COLOUR_RANGE = (0.3, 0.7)  # class base colour, per channel
WAVE_AMPLITUDE = 0.12  # class wave amplitude (times channel weights of mean size ~0.8)
FREQUENCY_RANGE = (1.0, 5.0)
AMPLITUDE_JITTER = (0.6, 1.4)  # per-image factor on each class wave
FREQUENCY_JITTER = 0.1  # per-image relative frequency jitter (std)
ANGLE_JITTER = 0.1  # per-image orientation jitter (std, radians)
DISTRACTOR_AMPLITUDE = 0.08
BRIGHTNESS_STD = 0.08  # per-image shift of all channels
COLOUR_STD = 0.04  # per-image, per-channel shift
NOISE_STD = 0.05  # per pixel, same in all channels


def _class_prototypes(seed: int, num_classes: int):
    g = seeded_generator("kdsweep.synthetic.classes", seed, num_classes)
    lo, hi = COLOUR_RANGE
    colour = lo + (hi - lo) * torch.rand(num_classes, 3, generator=g)
    freq_lo, freq_hi = FREQUENCY_RANGE
    frequency = freq_lo + (freq_hi - freq_lo) * torch.rand(num_classes, CLASS_WAVES, generator=g)
    angle = math.pi * torch.rand(num_classes, CLASS_WAVES, generator=g)  # orientation in [0, pi)
    weights = WAVE_AMPLITUDE * torch.randn(num_classes, CLASS_WAVES, 3, generator=g)  # per-channel wave weight
    return colour, frequency, angle, weights


def _waves(frequency, angle, phase, weights) -> torch.Tensor:
    """Sum of plane waves: (n, W) frequency/angle/phase, (n, W, 3) weights -> float (n, 3, 32, 32).

    cos(a x + b y + phase) = cos(a x + phase) cos(b y) - sin(a x + phase) sin(b y), so the image is a batched
    matrix product of 32-long row and column factors instead of n * W * 1024 cosines.
    """
    pixel = torch.arange(SIZE, dtype=torch.float32)
    step = 2 * math.pi * frequency / SIZE  # radians per px
    along_x = (step * torch.cos(angle))[..., None] * pixel + phase[..., None]  # (n, W, 32)
    along_y = (step * torch.sin(angle))[..., None] * pixel
    rows = torch.cat([torch.cos(along_y), torch.sin(along_y)], dim=1)  # (n, 2W, 32) indexed by y
    cols = torch.cat([torch.cos(along_x), torch.sin(along_x)], dim=1)  # (n, 2W, 32) indexed by x
    weights = torch.cat([weights, -weights], dim=1)  # (n, 2W, 3): the sin * sin term is subtracted
    weighted_rows = (weights[:, :, :, None] * rows[:, :, None, :]).flatten(2)  # (n, 2W, 3*32)
    return torch.bmm(weighted_rows.transpose(1, 2), cols).view(-1, 3, SIZE, SIZE)


def _chunk(prototypes, g: torch.Generator, blocks: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    colour, frequency, angle, weights = prototypes
    labels = torch.rand(blocks, num_classes, generator=g).argsort(dim=1).flatten()  # every class once per block
    n = len(labels)
    freq_lo, freq_hi = FREQUENCY_RANGE
    gain = torch.empty(n, CLASS_WAVES).uniform_(*AMPLITUDE_JITTER, generator=g)
    shift = BRIGHTNESS_STD * torch.randn(n, 1, generator=g) + COLOUR_STD * torch.randn(n, 3, generator=g)
    # Waves: the class's (jittered), the distractors, and a zero-frequency one that carries the colour (cos 0 = 1).
    # Weights are in 0..255 grey levels, the colour's + 0.5 so that truncation to uint8 rounds to nearest.
    frequencies = torch.cat(
        [
            frequency[labels] * (1 + FREQUENCY_JITTER * torch.randn(n, CLASS_WAVES, generator=g)),
            freq_lo + (freq_hi - freq_lo) * torch.rand(n, DISTRACTOR_WAVES, generator=g),
            torch.zeros(n, 1),
        ],
        dim=1,
    )
    angles = torch.cat(
        [
            angle[labels] + ANGLE_JITTER * torch.randn(n, CLASS_WAVES, generator=g),
            math.pi * torch.rand(n, DISTRACTOR_WAVES, generator=g),
            torch.zeros(n, 1),
        ],
        dim=1,
    )
    phases = 2 * math.pi * torch.rand(n, CLASS_WAVES + DISTRACTOR_WAVES + 1, generator=g)  # random: position-free
    phases[:, -1] = 0
    amplitudes = torch.cat(
        [
            gain[..., None] * weights[labels],
            DISTRACTOR_AMPLITUDE * torch.randn(n, DISTRACTOR_WAVES, 3, generator=g),
            (colour[labels] + shift)[:, None, :] + 0.5 / 255,
        ],
        dim=1,
    )
    pixels = _waves(frequencies, angles, phases, 255 * amplitudes)
    # Luminance noise, shared by the channels: a third of the random draws of per-channel noise (draws dominate).
    pixels += (255 * NOISE_STD) * torch.randn(n, 1, SIZE, SIZE, generator=g)
    return pixels.clamp_(0, 255).to(torch.uint8), labels


def synthetic_split(seed: int, split: str, size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` images of one split ("train" or "test") -> (uint8 (size, 3, 32, 32), int64 (size,) labels)."""
    prototypes = _class_prototypes(seed, num_classes)
    blocks_per_chunk = max(1, IMAGES_PER_CHUNK // num_classes)
    chunk_size = blocks_per_chunk * num_classes
    images = torch.empty(size, 3, SIZE, SIZE, dtype=torch.uint8)
    labels = torch.empty(size, dtype=torch.long)
    for start in range(0, size, chunk_size):
        g = seeded_generator("kdsweep.synthetic.images", seed, num_classes, split, start // chunk_size)
        chunk_images, chunk_labels = _chunk(prototypes, g, blocks_per_chunk, num_classes)
        stop = min(start + chunk_size, size)
        images[start:stop], labels[start:stop] = chunk_images[: stop - start], chunk_labels[: stop - start]
    return images, labels


def make_synthetic(seed: int, num_classes: int, train_size: int, test_size: int):
    """-> (train_images, train_labels, test_images, test_labels); train and test are disjoint draws."""
    train = synthetic_split(seed, "train", train_size, num_classes)
    test = synthetic_split(seed, "test", test_size, num_classes)
    return (*train, *test)


@dataclass(frozen=True)
class SyntheticConfig(Subsets):
    num_classes: int = knob(100, ge=2, le=MAX_IMAGES, doc="classes")
    train_size: int = knob(50000, ge=1, le=MAX_IMAGES, doc="training images")
    test_size: int = knob(10000, ge=1, le=MAX_IMAGES, doc="test images")
    seed: int = knob(0, ge=0, le=MAX_SEED, doc="the images are a pure function of (seed, sizes, classes)")


@register_dataset("synthetic")
class Synthetic(Dataset):
    Config = SyntheticConfig
    summary = "generated 32 px textures, learnable, no files (smoke runs and tests; CIFAR-100's normalisation)"

    @classmethod
    def geometry(cls, config) -> Geometry:
        return CIFAR100_GEOMETRY  # the images are CIFAR-sized; CIFAR-100's statistics are close enough to normalise

    @classmethod
    def sizes(cls, config) -> Sizes:
        return Sizes(config.num_classes, config.train_size, config.test_size)

    @classmethod
    def load(cls, config) -> Splits:
        train_images, train_labels, test_images, test_labels = make_synthetic(
            config.seed, config.num_classes, config.train_size, config.test_size)
        names = tuple(f"class_{i:03d}" for i in range(config.num_classes))
        return Splits(train_images, train_labels, test_images, test_labels, names)
