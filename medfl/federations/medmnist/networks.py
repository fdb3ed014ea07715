"""Networks of the MedMNIST jobs: MedMNIST's "getting started" CNN, Flower's LeNet and MONAI's DenseNet121.

All are registered with :func:`medfl.common.networks.register_network` (``medmnist_cnn``, ``flower_lenet``,
``medmnist_densenet121``) and built with ``build_network(**network_for_data(config["network"], info, image_size))``.
"""

from __future__ import annotations

from typing import Tuple

import torch
from monai.networks.nets import DenseNet121
from torch import nn

from medfl.common.networks import register_network
from medfl.common.settings import NetworkSpec

from .data import MedMNISTInfo

MEDMNIST_NETWORKS = ("medmnist_cnn", "flower_lenet", "medmnist_densenet121")
MEDMNIST_IMAGE_SIZE = 28
DEFAULT_NETWORK = NetworkSpec(name="medmnist_cnn")
# DenseNet121 halves the image 5 times (stride-2 stem conv, max-pool, 3 transition pools): below 32 pixels the
# last transition pool gets a 1x1 map and fails. 28x28 MedMNIST needs the 64/128/224 MedMNIST+ files for it.
DENSENET121_MIN_IMAGE_SIZE = 32


def _conv_block(in_channels: int, out_channels: int, padding: int = 0, pool: bool = False) -> nn.Sequential:
    """conv 3x3 - BatchNorm - ReLU, then a 2x2 max-pool when ``pool``."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding), nn.BatchNorm2d(out_channels),
              nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class MedMNISTCNN(nn.Module):
    """The CNN of MedMNIST's "getting started" notebook, the seed's ``fl_demo/cnn_pathmnist.py:Net`` (ALGORITHMS.md
    §4.0): five conv3x3-BN-ReLU blocks and three linear layers.

    ``layer1`` conv(in, 16) | ``layer2`` conv(16, 16), max-pool 2 | ``layer3`` conv(16, 64) | ``layer4``
    conv(64, 64) | ``layer5`` conv(64, 64, padding 1), max-pool 2 | ``fc`` Linear(64 s s, 128) - ReLU -
    Linear(128, 128) - ReLU - Linear(128, num_classes). Only the last conv is padded, so a 28x28 image goes
    28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 8 -> 4 and ``s = 4`` (the original's fixed ``64 * 4 * 4``); other sizes give
    ``s = ((S - 4) // 2 - 4) // 2``. Module names follow the original, so its state-dict keys are the same.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 9, image_size: int = MEDMNIST_IMAGE_SIZE,
                 hidden_size: int = 128):
        super().__init__()
        feature_size = ((image_size - 4) // 2 - 4) // 2
        if feature_size < 1:
            raise ValueError(f"MedMNISTCNN needs images of at least 16 pixels, got {image_size}")
        self.layer1 = _conv_block(in_channels, 16)
        self.layer2 = _conv_block(16, 16, pool=True)
        self.layer3 = _conv_block(16, 64)
        self.layer4 = _conv_block(64, 64)
        self.layer5 = _conv_block(64, 64, padding=1, pool=True)
        self.fc = nn.Sequential(
            nn.Linear(64 * feature_size * feature_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5):
            x = block(x)
        return self.fc(torch.flatten(x, 1))


class FlowerLeNet(nn.Module):
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
            raise ValueError(f"FlowerLeNet needs images of at least {3 * kernel_size + 1} pixels, got {image_size}")
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


@register_network("medmnist_cnn")
def build_medmnist_cnn(in_channels: int = 3, num_classes: int = 9, image_size: int = MEDMNIST_IMAGE_SIZE) -> nn.Module:
    """:class:`MedMNISTCNN` (the seed job's network)."""
    return MedMNISTCNN(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


@register_network("flower_lenet")
def build_flower_lenet(in_channels: int = 3, num_classes: int = 9, image_size: int = MEDMNIST_IMAGE_SIZE) -> nn.Module:
    """:class:`FlowerLeNet` (the scale-out job's network)."""
    return FlowerLeNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


@register_network("medmnist_densenet121")
def build_medmnist_densenet121(
    in_channels: int = 3, num_classes: int = 9, image_size: int = MEDMNIST_IMAGE_SIZE
) -> nn.Module:
    """``monai.networks.nets.DenseNet121(spatial_dims=2)`` as in Flower's MONAI quickstart; needs images of at least
    :data:`DENSENET121_MIN_IMAGE_SIZE` pixels (the MedMNIST+ files)."""
    if image_size < DENSENET121_MIN_IMAGE_SIZE:
        raise ValueError(
            f"densenet121 needs images of at least {DENSENET121_MIN_IMAGE_SIZE}x{DENSENET121_MIN_IMAGE_SIZE}, "
            f"got {image_size}: use a MedMNIST+ file of size 64, 128 or 224, or the 'medmnist_cnn' network"
        )
    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)


def network_for_data(network: NetworkSpec, info: MedMNISTInfo, image_size: int) -> NetworkSpec:
    """``network`` with ``in_channels``, ``num_classes`` and ``image_size`` taken from the data.

    The job config names only the network; these three follow from the MedMNIST set and the file, so switching
    from PathMNIST to BreastMNIST changes only the data entries. A value given in the config that disagrees with
    the data raises ``ValueError``.
    """
    args = dict(network.args)
    from_data = {"in_channels": info.channels, "num_classes": info.num_classes, "image_size": image_size}
    for key, value in from_data.items():
        if args.setdefault(key, value) != value:
            raise ValueError(f"network args {key}={args[key]} but the data has {value}; leave {key} out of the config")
    return NetworkSpec(name=network.name, args=args)
