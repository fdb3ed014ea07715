"""Selector networks: FedSM's image-to-site classifier.

``selector_cnn`` is small and fast on a CPU; ``vgg11`` follows the layout of the original FedSM selector
(VGG-11 configuration "A", one input channel, no batch norm, 4096-wide classifier with dropout). Its classifier's
linear layers add their weight gradients in place (:class:`~medfl.common.accumulating_linear.AccumulatingLinear`:
the same gradients without a second, transient one of the 103 M-weight layer in the full-batch selector epoch).
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from medfl.common.accumulating_linear import AccumulatingLinear
from medfl.common.networks import register_network

VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@register_network("selector_cnn")
def build_selector_cnn(in_channels: int = 1, num_classes: int = 3, channels: Sequence[int] = (16, 32, 64, 128)) -> nn.Module:
    """Strided conv blocks (conv-BN-ReLU, stride 2) -> global average pool -> linear; any input size."""
    blocks, c_in = [], in_channels
    for c_out in channels:
        blocks.append(Convolution(spatial_dims=2, in_channels=c_in, out_channels=c_out, strides=2, kernel_size=3,
                                  act="RELU", norm="BATCH"))
        c_in = c_out
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))


class VGG11Selector(nn.Module):
    """VGG-11 (configuration "A") classifier as used by the original FedSM selector, ``(B,C,H,W) -> (B,K)``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        layers, c_in = [], in_channels
        for v in VGG11_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            AccumulatingLinear(c_in * 49, hidden), nn.ReLU(True), nn.Dropout(dropout),
            AccumulatingLinear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout),
            AccumulatingLinear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


register_network("vgg11")(VGG11Selector)
