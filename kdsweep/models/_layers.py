"""Small building blocks shared by the CIFAR architectures.

Only what is really the same across files lives here: the conv + BN (+ ReLU) unit that MobileNetV2 and VGG store as
consecutive entries of an `nn.Sequential` (so their state_dict keys are `<seq>.<i>.weight`), and the weight init
RepDistiller uses for those two families.
"""

from __future__ import annotations

import math

from torch import nn


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    groups: int = 1,
    bias: bool = False,
    relu: bool = True,
) -> list[nn.Module]:
    """[Conv2d, BatchNorm2d] (+ ReLU): a 'same'-padded conv unit, returned as a list to splice into a Sequential.

    Returning a list (not a Sequential) keeps the reference's flat indexing: a MobileNetV2 inverted residual is
    three such units in one Sequential, numbered 0..7.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def init_repdistiller(model: nn.Module) -> None:
    """RepDistiller's init for MobileNetV2 and VGG, in module order (so a seeded run draws the same numbers).

    Conv: N(0, sqrt(2 / (k*k*out_channels))) (He, fan-out; for a depthwise conv this counts all its output
    channels), bias 0. BN: weight 1, bias 0. Linear: N(0, 0.01), bias 0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()
