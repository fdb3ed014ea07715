"""How much a frozen prior knows about the classes: k-nearest-neighbour classification on its features.

The k-NN monitor of self-supervised learning (Wu et al., CVPR 2018, "instance discrimination"; used by the MoCo
demos): a query takes the label that its ``k`` most cosine-similar memory-bank samples vote for, each vote weighted
``exp(similarity / temperature)``. No parameter is trained, so the accuracy measures the features themselves.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfl.federations.isic2019.evaluation import class_hits

KNN_TEMPERATURE = 0.07  # the k-NN monitor's vote temperature (Wu et al. 2018)
ENCODE_BATCH = 256


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, batch_size: int = ENCODE_BATCH) -> torch.Tensor:
    """Features of ``images`` (N, C, H, W) by ``encoder`` in eval mode, in batches: (N, F)."""
    encoder.eval()
    return torch.cat([encoder(part) for part in images.split(batch_size)])


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    num_classes: int,
    temperature: float = KNN_TEMPERATURE,
) -> torch.Tensor:
    """Class of each of ``queries`` (Q, F) by a weighted vote of its ``k`` nearest rows of ``bank`` (N, F) by cosine
    similarity, with labels ``bank_labels`` (N,) in 0..num_classes-1: (Q,) long. Ties go to the lower class."""
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"{bank.shape[0]} memory-bank features but {bank_labels.shape[0]} labels")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be in 1..{bank.shape[0]} (the memory bank's size), got {k}")
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    top, index = similarity.topk(k, dim=1)
    votes = torch.zeros(queries.shape[0], num_classes)
    votes.scatter_add_(1, bank_labels.long()[index], torch.exp(top / temperature))
    return votes.argmax(dim=1)


def class_recalls(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> list[float]:
    """Per class, the fraction of its samples predicted as it (NaN for a class without samples)."""
    correct, total = class_hits(labels, predictions, num_classes)
    return [c / t if t else float("nan") for c, t in zip(correct, total)]
