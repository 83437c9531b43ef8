"""Deterministic, order-independent contents for a model's state_dict, and the fixed input of the golden tests.

Shared by the golden-data generator (run once against the SimKD reference code) and `test_models.py`: every entry
is drawn from a generator seeded with crc32 of its key, so the same key gets the same values whatever the module
order or the model class, and a kdsweep model and a reference model with the same keys get identical weights.

Scales: conv/linear weights ~ N(0, 2/fan_in) (He), BN gains in [0.5, 1), biases and running means ~ N(0, 0.01^2),
running variances in [0.5, 1.5). With these the image-dependent part of the logits stays well above rounding for
every model (biases of 0.1 drown it in MobileNetV2), while the deepest ResNets, whose residual sums grow with
depth, stay below ~1e5 (resnet110x2: 7e4).
"""

from __future__ import annotations

import zlib

import torch

GOLDEN_INPUT_SEED = 0
GOLDEN_INPUT_SHAPE = (2, 3, 32, 32)


def _generator(key: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(key.encode()))


def fill_value(key: str, like: torch.Tensor) -> torch.Tensor:
    """The deterministic value for state_dict entry `key` (same shape and dtype as `like`)."""
    shape, g = like.shape, _generator(key)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros_like(like)
    if leaf == "running_var":
        value = torch.rand(shape, generator=g) + 0.5  # [0.5, 1.5): positive
    elif leaf == "running_mean" or leaf == "bias":
        value = 0.01 * torch.randn(shape, generator=g)
    elif leaf == "weight" and len(shape) == 1:  # BN gain
        value = 0.5 * torch.rand(shape, generator=g) + 0.5  # [0.5, 1.0)
    elif leaf == "weight":  # conv (out, in/groups, kh, kw) or linear (out, in)
        fan_in = shape[1:].numel()
        value = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    else:
        raise ValueError(f"no fill rule for state_dict key {key!r}")
    return value.to(like.dtype)


def filled_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A full state_dict for `model` (parameters and buffers) with every entry from `fill_value`."""
    return {key: fill_value(key, value) for key, value in model.state_dict().items()}


def golden_input() -> torch.Tensor:
    """The fixed 2x3x32x32 input of the golden logits."""
    g = torch.Generator().manual_seed(GOLDEN_INPUT_SEED)
    return torch.randn(GOLDEN_INPUT_SHAPE, generator=g)
