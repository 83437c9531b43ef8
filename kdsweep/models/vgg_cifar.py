"""CIFAR VGG with BatchNorm, state_dict-compatible with RepDistiller / SimKD `models/vgg.py` (`vgg8_bn`, `vgg13_bn`).

Five blocks of conv units (conv3x3 with bias, BN, ReLU), max-pools between them, one Linear(512) classifier:

    block0  -> f0   64 x 32 x 32   pool0
    block1  -> f1  128 x 16 x 16   pool1
    block2  -> f2  256 x  8 x  8   pool2
    block3  -> f3  512 x  4 x  4   (pool3 only for inputs of 64 px and more: the reference's `h == 64`)
    block4  -> f4  512 x  4 x  4   pool4 = global average pool, classifier

so for CIFAR the last two blocks both run at 4x4. vgg8 has one unit per block, vgg13 two.

State-dict note: the reference builds each block as a Sequential without its final ReLU and applies that ReLU in
`forward`. Here every block holds complete units (conv, BN, ReLU); ReLU has no state, so the keys (block<i>.<3j>.*
for the conv, block<i>.<3j+1>.* for the BN) and the numbers are the same, and every unit output, the block
outputs included, is post-ReLU as in the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsweep.models._layers import conv_bn, init_repdistiller
from kdsweep.models.base import FeatureInfo, FeatureModel, Intermediates, run_blocks
from kdsweep.models.registry import register_model

# Conv widths per block (RepDistiller's cfg 'S' and 'B').
_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}
_UNIT = 3  # modules per conv unit: conv, BN, ReLU


class CifarVGG(FeatureModel):
    def __init__(self, widths: list[list[int]], num_classes: int = 100, image_size: int = 32):
        super().__init__()
        in_channels = 3
        for i, block_widths in enumerate(widths):
            layers: list[nn.Module] = []
            for w in block_widths:
                layers += conv_bn(in_channels, w, 3, bias=True)
                in_channels = w
            setattr(self, f"block{i}", nn.Sequential(*layers))

        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)  # used only for 64x64 inputs, see _forward
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)

        init_repdistiller(self)

        # 32x32 input: blocks 0..3 run at 32, 16, 8, 4; block4 stays at 4 because pool3 is skipped. The reference
        # pools after block3 for 64x64 inputs only (`h == 64`); kdsweep does so from 64 px up.
        self.uses_pool3 = image_size >= 64
        reductions = (1, 2, 4, 8, 16 if self.uses_pool3 else 8)
        self.feature_info = FeatureInfo(
            stage_channels=tuple(b[-1] for b in widths),
            stage_reductions=reductions,
            block_channels=tuple(w for b in widths for w in b),
            block_reductions=tuple(r for b, r in zip(widths, reductions) for _ in b),
            pooled_dim=widths[-1][-1],
            input_size=image_size,
        )

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.classifier

    def _forward(self, x: torch.Tensor, *, want_blocks: bool, want_head: bool) -> Intermediates:
        stages: list[torch.Tensor] = []
        block_maps: list[torch.Tensor] | None = [] if want_blocks else None
        conv_blocks = (self.block0, self.block1, self.block2, self.block3, self.block4)
        pools_after = (self.pool0, self.pool1, self.pool2, self.pool3 if self.uses_pool3 else None, None)
        for block, pool in zip(conv_blocks, pools_after):
            units = (block[j:j + _UNIT] for j in range(0, len(block), _UNIT))  # conv, BN, ReLU
            x = run_blocks(x, units, block_maps)
            stages.append(x)
            if pool is not None:
                x = pool(x)
        if not want_head:
            return Intermediates(stages, block_maps, None, None)
        pooled = torch.flatten(self.pool4(x), 1)
        return Intermediates(stages, block_maps, pooled, self.classifier(pooled))


def _register(name: str, widths: list[list[int]]) -> None:
    def build(num_classes: int = 100, image_size: int = 32) -> CifarVGG:
        return CifarVGG(widths, num_classes, image_size)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR VGG with BN, conv widths {widths} (reference `{name}_bn`)."
    register_model(name)(build)


for _name, _widths in _CONFIGS.items():
    _register(_name, _widths)
