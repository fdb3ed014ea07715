"""FedMAS's client network: the projector ("free") head of §3.2 on a classifier, and the free-head ResNet."""

from __future__ import annotations

import torch
from torch import nn

from medfl.common.networks import register_network
from medfl.common.resnet import trunk_features
from medfl.federations.isic2019.networks import ResNetClassifier


class FreeHead:
    """Mixin: the projector ("free") head of §3.2 on a classifier whose logits are ``classify(embed(x))``.

    The host ``nn.Module`` implements ``embed`` ((B, C, H, W) -> (B, F) features) and ``classify`` ((B, F) ->
    (B, n_classes) logits z1, used for prediction) and calls :meth:`add_free_head` in its ``__init__``.
    ``heads(x)`` returns ``(features, z1, p, z2)`` for training: ``p = p_free(features)`` (B, prior_dim), aligned
    with the prior h(x), with ``p_free = Linear(F, F) - BatchNorm1d(F) - ReLU - Linear(F, prior_dim)``, and
    ``z2 = fc_free(p)`` (B, n_classes), the extra classifier that balances the projector's training.
    """

    def add_free_head(self, features: int, prior_dim: int, n_classes: int) -> None:
        self.prior_dim = prior_dim
        self.p_free = nn.Sequential(
            nn.Linear(features, features),
            nn.BatchNorm1d(features),
            nn.ReLU(inplace=True),
            nn.Linear(features, prior_dim),
        )
        self.fc_free = nn.Linear(prior_dim, n_classes)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.embed(x)
        p = self.p_free(features)
        return features, self.classify(features), p, self.fc_free(p)


@register_network("free_head_resnet")
class FreeHeadResNet(ResNetClassifier, FreeHead):
    """FedMAS client model of the original (§3.2): ResNet trunk f, classifier ``fc`` and the :class:`FreeHead`.

    ``forward(x)`` with ``x`` (B, C, H, W) returns the logits ``z1 = fc(f(x))`` (B, n_classes); the features
    of ``heads(x)`` are ``f(x)`` (B, F), F = 512 for ResNet-18.
    """

    def __init__(self, n_classes: int = 8, prior_dim: int = 2048, depth: int = 18, in_channels: int = 3) -> None:
        super().__init__(n_classes, depth, in_channels)
        self.add_free_head(trunk_features(depth), prior_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)
