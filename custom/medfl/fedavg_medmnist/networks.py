"""Networks of the Flower-style MedMNIST job: the example's small CNN and MONAI's DenseNet121."""

from __future__ import annotations

from typing import Tuple

import torch
from monai.networks.nets import DenseNet121
from torch import nn

NETWORKS = ("cnn", "densenet121")
MEDMNIST_IMAGE_SIZE = 28
# DenseNet121 halves the image 5 times (stride-2 stem conv, max-pool, 3 transition pools): below 32 pixels the
# last transition pool gets a 1x1 map and fails. 28x28 MedMNIST needs the 64/128/224 MedMNIST+ files for it.
DENSENET121_MIN_IMAGE_SIZE = 32


class FlowerCNN(nn.Module):
    """The LeNet-style ``Net`` of Flower's ``simulation_pytorch`` example (ALGORITHMS.md §4.1), sized for MedMNIST.

    conv(in, 6, 5) - ReLU - maxpool 2 - conv(6, 16, 5) - ReLU - maxpool 2 - fc 120 - ReLU - fc 84 - ReLU - fc classes.
    Input ``(B, in_channels, S, S)``, output logits ``(B, num_classes)``. The flattened size is
    ``16 * s * s`` with ``s = ((S - 4) // 2 - 4) // 2``: 256 for MedMNIST's 28x28 (400 for the CIFAR-10 original).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 9,
        image_size: int = MEDMNIST_IMAGE_SIZE,
        conv_channels: Tuple[int, int] = (6, 16),
        kernel_size: int = 5,
        hidden_sizes: Tuple[int, int] = (120, 84),
    ):
        super().__init__()
        feature_size = ((image_size - kernel_size + 1) // 2 - kernel_size + 1) // 2
        if feature_size < 1:
            raise ValueError(f"FlowerCNN needs images of at least {3 * kernel_size + 1} pixels, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, conv_channels[0], kernel_size),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(conv_channels[0], conv_channels[1], kernel_size),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(conv_channels[1] * feature_size * feature_size, hidden_sizes[0]),
            nn.ReLU(),
            nn.Linear(hidden_sizes[0], hidden_sizes[1]),
            nn.ReLU(),
            nn.Linear(hidden_sizes[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_medmnist_network(
    name: str, in_channels: int, num_classes: int, image_size: int = MEDMNIST_IMAGE_SIZE
) -> nn.Module:
    """``"cnn"``: :class:`FlowerCNN`; ``"densenet121"``: ``monai.networks.nets.DenseNet121(spatial_dims=2)`` as in
    Flower's MONAI quickstart (needs images of at least :data:`DENSENET121_MIN_IMAGE_SIZE` pixels)."""
    if name == "cnn":
        return FlowerCNN(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    if name == "densenet121":
        if image_size < DENSENET121_MIN_IMAGE_SIZE:
            raise ValueError(
                f"densenet121 needs images of at least {DENSENET121_MIN_IMAGE_SIZE}x{DENSENET121_MIN_IMAGE_SIZE}, "
                f"got {image_size}: use a MedMNIST+ file of size 64, 128 or 224, or the 'cnn' network"
            )
        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
    raise ValueError(f"unknown network {name!r}; choose one of {NETWORKS}")
