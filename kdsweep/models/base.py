"""The one feature interface every kdsweep model implements.

Distillation methods never reach into a model by module path. They ask a model for

* stage maps: the reference's `feat` list without the pooled vector (`model(x, is_feat=True)[0][:-1]`),
* block maps: the output of every residual / inverted-residual block (or conv unit for VGG), in order,
* the pooled feature and the logits,

through `forward_intermediates`, and they know every channel count and spatial size up front from
`feature_info`, without a dummy forward. The last block map is always the last stage map, so a method that pairs
the last blocks pairs exactly the maps SimKD uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """Shapes of a model's intermediate maps for its input size, known at construction time.

    A reduction r means the map is (input_size // r) x (input_size // r): resnet32x4's layer3 has reduction 4
    (8x8 for a 32x32 input).
    """

    stage_channels: tuple[int, ...]
    stage_reductions: tuple[int, ...]
    block_channels: tuple[int, ...]
    block_reductions: tuple[int, ...]
    pooled_dim: int  # input width of the classifier
    input_size: int = 32  # px, the square input the model was built for (the dataset's image_size)

    def stage_size(self, index: int) -> int:
        return self.input_size // self.stage_reductions[index]

    def block_size(self, index: int) -> int:
        return self.input_size // self.block_reductions[index]


@dataclass
class Intermediates:
    """What `forward_intermediates` returns; fields not asked for are None."""

    stages: list[torch.Tensor]
    blocks: list[torch.Tensor] | None
    pooled: torch.Tensor | None  # (N, pooled_dim)
    logits: torch.Tensor | None  # (N, num_classes)


class FeatureModel(nn.Module):
    """Base class: subclasses build the layers with reference state_dict names and implement `_forward`."""

    feature_info: FeatureInfo

    def forward_intermediates(self, x: torch.Tensor, *, blocks: bool = False, head: bool = True) -> Intermediates:
        """Stage maps always; block maps if `blocks`; pooled feature and logits if `head`.

        `head=False` skips the layers after the last stage (MobileNetV2's conv2, the pooling and the classifier):
        SimKD students never use them, so skipping saves their cost.
        """
        return self._forward(x, want_blocks=blocks, want_head=head)

    def _forward(self, x: torch.Tensor, *, want_blocks: bool, want_head: bool) -> Intermediates:
        raise NotImplementedError

    @property
    def classifier_layer(self) -> nn.Linear:
        """The final Linear layer (the teacher classifier SimKD reuses)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, is_feat: bool = False):
        """The reference API: logits, or (stage maps + [pooled], logits) when `is_feat`."""
        out = self._forward(x, want_blocks=False, want_head=True)
        if is_feat:
            return [*out.stages, out.pooled], out.logits
        return out.logits


def run_blocks(x: torch.Tensor, blocks: Iterable[Callable[[torch.Tensor], torch.Tensor]],
               block_maps: list[torch.Tensor] | None) -> torch.Tensor:
    """Apply `blocks` in order, appending every block's output to `block_maps` unless it is None."""
    for block in blocks:
        x = block(x)
        if block_maps is not None:
            block_maps.append(x)
    return x
