"""CIFAR MobileNetV2, state_dict-compatible with RepDistiller / SimKD `models/mobilenetv2.py`.

Layout for a 32x32 input, expansion T and width multiplier W (channels shown for W = 1; W scales each of them
with int(c * W), except the 1280-wide conv2, which only grows for W > 1):

    conv1      conv3x3 stride 2, BN, ReLU      32 x 16 x 16   stage 0
    blocks[0]  1 x IR(t=1)                     16 x 16 x 16
    blocks[1]  2 x IR(t=T)                     24 x 16 x 16   stage 1
    blocks[2]  3 x IR(t=T), first stride 2     32 x  8 x  8   stage 2
    blocks[3]  4 x IR(t=T), first stride 2     64 x  4 x  4
    blocks[4]  3 x IR(t=T)                     96 x  4 x  4   stage 3
    blocks[5]  3 x IR(t=T), first stride 2    160 x  2 x  2
    blocks[6]  1 x IR(t=T)                    320 x  2 x  2   stage 4
    conv2      conv1x1, BN, ReLU             1280 x  2 x  2
    avgpool    AvgPool2d(2, ceil_mode=True) -> 1280, classifier Linear(1280 -> classes)

The stem's stride 2 (unlike ImageNet-style CIFAR ports) is the reference's; maps end at 2x2.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsweep.models._layers import conv_bn, init_repdistiller
from kdsweep.models.base import FeatureInfo, FeatureModel, Intermediates, run_blocks
from kdsweep.models.registry import register_model

# (expansion t, channels c, repeats n, first stride s) per stage of `blocks`; None means "the model's T".
_SETTINGS: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
# Indices into `blocks` whose outputs are stage maps (after the stem): the reference's f1..f4.
_STAGE_GROUPS = (1, 2, 4, 6)


class InvertedResidual(nn.Module):
    """Linear bottleneck: 1x1 expand (BN ReLU), 3x3 depthwise (BN ReLU), 1x1 project (BN, no ReLU).

    `conv` holds the eight layers as one Sequential (keys conv.0 .. conv.7). The expand conv is kept even for
    t = 1, as in the reference. The residual is added when the block keeps resolution and width.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn(in_channels, hidden, 1),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *conv_bn(hidden, out_channels, 1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(FeatureModel):
    def __init__(self, expansion: int, width: float, num_classes: int = 100, image_size: int = 32):
        super().__init__()
        in_channels = int(32 * width)
        self.conv1 = nn.Sequential(*conv_bn(3, in_channels, 3, stride=2))

        # Walk the settings once, building the blocks and recording each block's width and reduction
        # (32x32 input: the stem already halves it).
        reduction = 2
        block_channels: list[int] = []
        block_reductions: list[int] = []
        group_ends: list[tuple[int, int]] = []  # (channels, reduction) after each group
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTINGS:
            out_channels = int(c * width)
            group = []
            for i in range(n):
                stride = s if i == 0 else 1
                group.append(InvertedResidual(in_channels, out_channels, stride, expansion if t is None else t))
                in_channels = out_channels
                reduction *= stride
                block_channels.append(out_channels)
                block_reductions.append(reduction)
            self.blocks.append(nn.Sequential(*group))
            group_ends.append((out_channels, reduction))

        # The reference never narrows the 1280-wide head below 1280 (width 0.5 keeps it at 1280).
        head_channels = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = nn.Sequential(*conv_bn(in_channels, head_channels, 1))
        self.classifier = nn.Sequential(nn.Linear(head_channels, num_classes))
        # The reference's kernel input_size // 16 (2 for 32x32 inputs): it pools the conv2 map (reduction 16) to 1x1.
        self.avgpool = nn.AvgPool2d(image_size // 16, ceil_mode=True)

        init_repdistiller(self)

        stage_ends = [group_ends[g] for g in _STAGE_GROUPS]
        self.feature_info = FeatureInfo(
            stage_channels=(int(32 * width), *(c for c, _ in stage_ends)),
            stage_reductions=(2, *(r for _, r in stage_ends)),
            block_channels=tuple(block_channels),
            block_reductions=tuple(block_reductions),
            pooled_dim=head_channels,
            input_size=image_size,
        )

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.classifier[0]

    def _forward(self, x: torch.Tensor, *, want_blocks: bool, want_head: bool) -> Intermediates:
        x = self.conv1(x)
        stages = [x]
        block_maps: list[torch.Tensor] | None = [] if want_blocks else None
        for g, group in enumerate(self.blocks):
            x = run_blocks(x, group, block_maps)
            if g in _STAGE_GROUPS:
                stages.append(x)
        if not want_head:
            return Intermediates(stages, block_maps, None, None)
        pooled = torch.flatten(self.avgpool(self.conv2(x)), 1)
        return Intermediates(stages, block_maps, pooled, self.classifier(pooled))


@register_model("MobileNetV2")
def mobilenetv2(num_classes: int = 100, image_size: int = 32) -> CifarMobileNetV2:
    """CRD's 'MobileNetV2' (reference `mobile_half`): T = 6, width 0.5."""
    return CifarMobileNetV2(6, 0.5, num_classes, image_size)


@register_model("MobileNetV2_1_0")
def mobilenetv2_1_0(num_classes: int = 100, image_size: int = 32) -> CifarMobileNetV2:
    """SimKD's 'MobileNetV2x2' (reference `mobile_half_double`): T = 6, width 1.0."""
    return CifarMobileNetV2(6, 1.0, num_classes, image_size)
