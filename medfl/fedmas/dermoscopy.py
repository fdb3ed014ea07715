"""FedMAS on the PRR-FL dermoscopy federation (``jobs/fedmas_dermoscopy``), with that federation's model and data.

The comparison of ``benchmarks/compare_dermoscopy.py`` trains every method with the same slim VGG16, data,
SGD schedule and budget. FedMAS keeps what makes it FedMAS (§3.4, §3.5): the projector head aligned with a frozen
self-supervised prior, Balanced Softmax, and MAS aggregation weights (:class:`~medfl.fedmas.controller.MASController`).

* :class:`FreeHeadVGG16Slim` is the slim VGG16 with the :class:`~medfl.fedmas.networks.FreeHead` on its
  ``fc1`` features.
* :class:`DermoscopyFedMASExecutor` is the FedMAS client with the dermoscopy client's splits, metrics and SGD
  schedule (:class:`~medfl.federations.dermoscopy.client.DermoscopyClient`). Its images are normalised to [-1, 1] (PRR-FL's
  ``Normalize(0.5, 0.5)``); the prior gets them normalised with the ImageNet mean and std, as
  ``data_preparation/pretrain_moco.py`` pre-trains it (the original feeds both the same ImageNet-normalised input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from medfl.common.networks import register_network
from medfl.federations.dermoscopy.client import DermoscopyClient, DermoscopySettings
from medfl.federations.dermoscopy.networks import VGG16_SLIM_BLOCKS, VGG16Slim
from medfl.federations.isic2019.data import IMAGENET_MEAN, IMAGENET_STD

from .executor import FedMASExecutor, FedMASOptions
from .networks import FreeHead


@register_network("free_head_vgg16_slim")
class FreeHeadVGG16Slim(VGG16Slim, FreeHead):
    """Slim VGG16 (:class:`~medfl.federations.dermoscopy.networks.VGG16Slim`) with FedMAS's projector head (§3.2).

    ``forward(x)`` (B, in_channels, H, W) -> logits z1 = ``fc2(f(x))`` (B, num_classes), as the plain network;
    ``heads(x)`` -> ``(f(x), z1, p, z2)`` with ``f(x)`` the ``fc1`` output (B, hidden_features) and ``p``
    (B, prior_dim). The VGG keys are unchanged; ``p_free.*`` and ``fc_free.*`` are added.
    """

    def __init__(
        self,
        num_classes: int = 3,
        prior_dim: int = 512,
        in_channels: int = 3,
        blocks: Sequence[Sequence[int]] = VGG16_SLIM_BLOCKS,
        hidden_features: int = 64,
    ) -> None:
        super().__init__(num_classes, in_channels, blocks, hidden_features)
        self.add_free_head(hidden_features, prior_dim, num_classes)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(features)


def unit_range_to_imagenet(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> ``(x - mean) / std`` of the same images in [0, 1], ImageNet mean and std."""
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return ((images + 1) / 2 - mean) / std


class DermoscopyFedMASSettings(FedMASOptions, DermoscopySettings):
    """FedMAS on a dermoscopy client: the federation's keys (data, SGD schedule) and FedMAS's."""

    loss: Literal["bsm"] = Field("bsm", description="FedMAS trains with Balanced Softmax")
    grad_clip_norm: float = Field(0.0, ge=0, description="clip the gradient norm to this value (0: off)")


class DermoscopyFedMASExecutor(DermoscopyClient, FedMASExecutor):
    """FedMAS client (§3.4, §3.5 (a)-(c)) on a dermoscopy client: the robust factor, BSM on ``z1`` and ``z2`` and
    the prior-alignment term of :class:`~medfl.fedmas.executor.FedMASExecutor`, trained with the federation's SGD
    schedule and reporting its validation metrics (``global`` = ``val_metric``) as the FedAvg dermoscopy client.

    Settings: :class:`DermoscopyFedMASSettings` (with a ``free_head_vgg16_slim`` network).
    """

    Settings = DermoscopyFedMASSettings

    def prior_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.prior(unit_range_to_imagenet(images))
