"""CIFAR ResNets (BasicBlock only), state_dict-compatible with RepDistiller / SimKD `models/resnet.py`.

Layout for a 32x32 input and filters (f0, f1, f2, f3):

    stem    conv3x3(3 -> f0) BN ReLU       f0 x 32 x 32    stage 0
    layer1  n BasicBlocks, stride 1        f1 x 32 x 32    stage 1
    layer2  n BasicBlocks, first stride 2  f2 x 16 x 16    stage 2
    layer3  n BasicBlocks, first stride 2  f3 x  8 x  8    stage 3
    head    global average pool, fc(f3 -> classes)

with n = (depth - 2) / 6 (each block has two convs; the stem and fc make the '+2'). The 'x2'/'x4' names widen
every stage; following RepDistiller the x4 models also double the stem (f0 = 32, not 64).
"""

from __future__ import annotations

import torch
from torch import nn

from kdsweep.models.base import FeatureInfo, FeatureModel, Intermediates, run_blocks
from kdsweep.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    The shortcut is the identity unless the block changes stride or width; then it is `downsample`, a
    Sequential(conv1x1 with the block's stride, BN), named as in the reference (`downsample.0`, `downsample.1`).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # In place is safe: `out` is a fresh BN output, and `x` (possibly a stage map handed out) is only read.
        out += shortcut
        return self.relu(out)


class CifarResNet(FeatureModel):
    def __init__(self, depth: int, filters: tuple[int, int, int, int], num_classes: int = 100, image_size: int = 32):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"BasicBlock ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        f0, f1, f2, f3 = filters

        self.conv1 = nn.Conv2d(3, f0, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(f0)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(f0, f1, n, stride=1)
        self.layer2 = self._make_layer(f1, f2, n, stride=2)
        self.layer3 = self._make_layer(f2, f3, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(f3, num_classes)

        # Same init, in the same module order, as the reference; fc keeps PyTorch's default init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

        # Reductions for a 32x32 input: the stem and layer1 keep 32x32, layer2 and layer3 halve it.
        self.feature_info = FeatureInfo(
            stage_channels=(f0, f1, f2, f3),
            stage_reductions=(1, 1, 2, 4),
            block_channels=(f1,) * n + (f2,) * n + (f3,) * n,
            block_reductions=(1,) * n + (2,) * n + (4,) * n,
            pooled_dim=f3,
            input_size=image_size,
        )

    @staticmethod
    def _make_layer(in_channels: int, channels: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, channels, stride)]
        blocks += [BasicBlock(channels, channels) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.fc

    def _forward(self, x: torch.Tensor, *, want_blocks: bool, want_head: bool) -> Intermediates:
        x = self.relu(self.bn1(self.conv1(x)))
        stages = [x]
        block_maps: list[torch.Tensor] | None = [] if want_blocks else None
        for layer in (self.layer1, self.layer2, self.layer3):
            x = run_blocks(x, layer, block_maps)
            stages.append(x)
        if not want_head:
            return Intermediates(stages, block_maps, None, None)
        pooled = torch.flatten(self.avgpool(x), 1)
        return Intermediates(stages, block_maps, pooled, self.fc(pooled))


# name -> (depth, filters). Plain CIFAR ResNets (He et al.) and RepDistiller's wide variants; in WRN notation
# resnet38 = wrn_40_1, resnet14x2 = wrn_16_2, resnet38x2 = wrn_40_2, resnet14x4 = wrn_16_4, resnet38x4 = wrn_40_4
# (each with three extra BN layers in the downsample shortcuts).
_PLAIN = (16, 16, 32, 64)
_X2 = (16, 32, 64, 128)
_X4 = (32, 64, 128, 256)
_CONFIGS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet8": (8, _PLAIN),
    "resnet14": (14, _PLAIN),
    "resnet20": (20, _PLAIN),
    "resnet32": (32, _PLAIN),
    "resnet38": (38, _PLAIN),
    "resnet44": (44, _PLAIN),
    "resnet56": (56, _PLAIN),
    "resnet110": (110, _PLAIN),
    "resnet116": (116, _PLAIN),
    "resnet14x2": (14, _X2),
    "resnet38x2": (38, _X2),
    "resnet110x2": (110, _X2),
    "resnet8x4": (8, _X4),
    "resnet14x4": (14, _X4),
    "resnet32x4": (32, _X4),
    "resnet38x4": (38, _X4),
}


def _register(name: str, depth: int, filters: tuple[int, int, int, int]) -> None:
    def build(num_classes: int = 100, image_size: int = 32) -> CifarResNet:
        return CifarResNet(depth, filters, num_classes, image_size)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR ResNet, depth {depth}, filters {list(filters)}."
    register_model(name)(build)


for _name, (_depth, _filters) in _CONFIGS.items():
    _register(_name, _depth, _filters)
