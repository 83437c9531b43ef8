"""CIFAR ShuffleNetV2, state_dict-compatible with RepDistiller / SimKD `models/ShuffleNetv2.py`.

Layout for a 32x32 input and stage widths (c1, c2, c3) (116, 232, 464 for net size 1; 176, 352, 704 for 1.5):

    stem    conv1x1(3 -> 24), BN, ReLU (no stride, no max-pool)   24 x 32 x 32   stage 0
    layer1  DownBlock (stride 2) + 3 BasicBlocks                  c1 x 16 x 16   stage 1
    layer2  DownBlock (stride 2) + 7 BasicBlocks                  c2 x  8 x  8   stage 2
    layer3  DownBlock (stride 2) + 3 BasicBlocks                  c3 x  4 x  4   stage 3
    head    conv1x1(c3 -> 1024), BN, ReLU, 4x4 average pool, `linear`(1024 -> classes)

Weights keep PyTorch's default init, as in the reference. The reference's last BasicBlock of each layer returns
(out, preact) so that `forward` can offer pre-activation features; kdsweep does not expose those, so every block
here returns just its output (no state is involved, the keys and numbers are the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.models.base import FeatureInfo, FeatureModel, Intermediates, run_blocks
from kdsweep.models.registry import register_model

STEM_CHANNELS = 24
HEAD_CHANNELS = 1024
# net size -> (stage widths, BasicBlocks per stage after the DownBlock)
_CONFIGS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "ShuffleV2": ((116, 232, 464), (3, 7, 3)),
    "ShuffleV2_1_5": ((176, 352, 704), (3, 7, 3)),
}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave channel groups: (N, g*k, H, W) -> channel order [0, k, 2k, ..., 1, k+1, ...]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class BasicBlock(nn.Module):
    """Stride-1 unit: split channels in half; the second half goes through 1x1 (BN ReLU), 3x3 depthwise (BN),
    1x1 (BN ReLU); concatenate with the untouched first half and shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, branch = x.chunk(2, dim=1)
        branch = F.relu(self.bn1(self.conv1(branch)))
        branch = self.bn2(self.conv2(branch))
        branch = F.relu(self.bn3(self.conv3(branch)))
        return channel_shuffle(torch.cat([kept, branch], 1))


class DownBlock(nn.Module):
    """Stride-2 unit that also sets the width: two branches of out/2 channels each, concatenated and shuffled.

    left:  3x3 depthwise stride 2 (BN), 1x1 (BN ReLU)                 -> conv1/bn1, conv2/bn2
    right: 1x1 (BN ReLU), 3x3 depthwise stride 2 (BN), 1x1 (BN ReLU)  -> conv3/bn3, conv4/bn4, conv5/bn5
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1))


class CifarShuffleNetV2(FeatureModel):
    def __init__(self, widths: tuple[int, int, int], repeats: tuple[int, int, int], num_classes: int = 100,
                 image_size: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        for i, (width, n) in enumerate(zip(widths, repeats), start=1):
            layer = nn.Sequential(DownBlock(in_channels, width), *(BasicBlock(width) for _ in range(n)))
            setattr(self, f"layer{i}", layer)
            in_channels = width
        self.conv2 = nn.Conv2d(widths[-1], HEAD_CHANNELS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(HEAD_CHANNELS)
        self.linear = nn.Linear(HEAD_CHANNELS, num_classes)

        # 32x32 input: the stem keeps 32x32, each layer's DownBlock halves it.
        self.feature_info = FeatureInfo(
            stage_channels=(STEM_CHANNELS, *widths),
            stage_reductions=(1, 2, 4, 8),
            block_channels=tuple(w for w, n in zip(widths, repeats) for _ in range(n + 1)),
            block_reductions=tuple(r for r, n in zip((2, 4, 8), repeats) for _ in range(n + 1)),
            pooled_dim=HEAD_CHANNELS,
            input_size=image_size,
        )
        self.pool_size = image_size // 8  # layer3's map (reduction 8): the reference's fixed 4 for 32x32 inputs

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.linear

    def _forward(self, x: torch.Tensor, *, want_blocks: bool, want_head: bool) -> Intermediates:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = [x]
        block_maps: list[torch.Tensor] | None = [] if want_blocks else None
        for layer in (self.layer1, self.layer2, self.layer3):
            x = run_blocks(x, layer, block_maps)
            stages.append(x)
        if not want_head:
            return Intermediates(stages, block_maps, None, None)
        x = F.relu(self.bn2(self.conv2(x)))
        pooled = torch.flatten(F.avg_pool2d(x, self.pool_size), 1)  # global: the reference's 4x4 for 32x32 inputs
        return Intermediates(stages, block_maps, pooled, self.linear(pooled))


def _register(name: str, widths: tuple[int, int, int], repeats: tuple[int, int, int]) -> None:
    def build(num_classes: int = 100, image_size: int = 32) -> CifarShuffleNetV2:
        return CifarShuffleNetV2(widths, repeats, num_classes, image_size)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR ShuffleNetV2, stage widths {list(widths)}, BasicBlocks {list(repeats)}."
    register_model(name)(build)


for _name, (_widths, _repeats) in _CONFIGS.items():
    _register(_name, _widths, _repeats)
