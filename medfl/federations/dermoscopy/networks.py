"""Slim VGG16 with BatchNorm, the PRR-FL original's ``VGG16_Slim_Checked`` (``--network vgg_nb``).

Registered as ``"vgg16_slim"`` for ``config_train.json`` (``{"name": "vgg16_slim", "args": {...}}``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from medfl.common.networks import register_network

__all__ = ["VGG16Slim", "VGG16_SLIM_BLOCKS"]

# output channels of the 3x3 convolutions in each of the five blocks; a 2x2 max-pool follows every block
VGG16_SLIM_BLOCKS: tuple[tuple[int, ...], ...] = ((32, 32), (64, 64), (128, 128, 128), (128, 128, 128), (256, 256, 256))


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (padding 1, no bias) -> BatchNorm2d -> ReLU, named ``conv`` / ``bn`` / ``relu`` as the original."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(inplace=True),
        )
    )


@register_network("vgg16_slim")
class VGG16Slim(nn.Module):
    """Slim VGG16: 13 conv-BN-ReLU layers in 5 pooled blocks, global average pooling, two bias-free linear layers.

    Input ``(B, in_channels, H, W)`` with H, W >= 32 (the original uses 3 x 128 x 128, giving 4 x 4 maps before
    the global pooling); output logits ``(B, num_classes)``. State-dict names equal the original's
    (``layer1.0.conv.weight``, ``layer1.0.bn.running_mean``, ``fc1.linear.weight``, ``fc1.bn.weight``,
    ``fc2.linear.weight``), so original checkpoints load and the ``bn`` name rule of `medfl.prrfl.pfa` applies.
    """

    def __init__(
        self,
        num_classes: int = 3,
        in_channels: int = 3,
        blocks: Sequence[Sequence[int]] = VGG16_SLIM_BLOCKS,
        hidden_features: int = 64,
    ) -> None:
        super().__init__()
        channels = in_channels
        for index, block in enumerate(blocks, start=1):
            layers = []
            for out_channels in block:
                layers.append(_conv_bn_relu(channels, out_channels))
                channels = out_channels
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            self.add_module(f"layer{index}", nn.Sequential(*layers))
        self.num_blocks = len(blocks)
        self.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d(1))
        self.fc1 = nn.Sequential(
            OrderedDict(
                linear=nn.Linear(channels, hidden_features, bias=False),
                bn=nn.BatchNorm1d(hidden_features),
                relu=nn.ReLU(inplace=True),
            )
        )
        self.fc2 = nn.Sequential(OrderedDict(linear=nn.Linear(hidden_features, num_classes, bias=False)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The features before the last linear layer: ``(B, in_channels, H, W) -> (B, hidden_features)``."""
        for index in range(1, self.num_blocks + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc1(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.embed(x))
