"""SimKD's projector: a bias-free conv bottleneck that maps a student map onto a teacher map's channels.

conv1x1(s_C -> t_C/f) BN ReLU, conv3x3(t_C/f -> t_C/f) BN ReLU, conv1x1(t_C/f -> t_C) BN ReLU, under the reference's
module name `transfer`, so `transfer.0.weight` ... match a SimKD checkpoint. MobileNetV2_1_0 -> resnet32x4:
320 -> 128 -> 128 -> 256, 222,208 parameters. Convs keep PyTorch's default init, as the reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, factor: int = 2):
        super().__init__()
        mid = out_channels // factor
        self.transfer = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, student_map: torch.Tensor, size: int) -> torch.Tensor:
        """Project `student_map`, first pooling it down to `size` x `size` when it is larger (spatial alignment)."""
        return self.transfer(pool_to(student_map, size))


def pool_to(feature_map: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling to size x size, or the map itself when it already is that small."""
    if feature_map.shape[-1] > size:
        return F.adaptive_avg_pool2d(feature_map, (size, size))
    return feature_map
