"""The Fed-ISIC2019 baseline network of FedMAS's setting: a torchvision-layout ResNet and a linear classifier."""

from __future__ import annotations

import os

import torch
from torch import nn

from medfl.common.networks import register_network
from medfl.common.resnet import load_trunk_state, read_torchvision_checkpoint, resnet_trunk, trunk_features


@register_network("resnet_classifier")
class ResNetClassifier(nn.Module):
    """ResNet trunk f and linear classifier ``fc``: (B, C, H, W) -> logits (B, n_classes).

    The baselines' model (BSM-FL and FedAvg use the original's plain torchvision ResNet-18 with ``fc``).
    Keys are ``trunk.*`` (torchvision's layout below it) and ``fc.*``, the same as FedMAS's
    ``FreeHeadResNet``'s.
    """

    def __init__(self, n_classes: int = 8, depth: int = 18, in_channels: int = 3) -> None:
        super().__init__()
        self.trunk = resnet_trunk(depth, in_channels)
        self.fc = nn.Linear(trunk_features(depth), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x))

    def load_trunk_checkpoint(self, path: str | os.PathLike) -> None:
        """Initialise the trunk from a torchvision ResNet checkpoint (e.g. ImageNet weights); ``fc.*`` is skipped."""
        load_trunk_state(self.trunk, read_torchvision_checkpoint(path), source=str(path))
