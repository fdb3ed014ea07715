"""FedMAS local objective (§3.4) and the per-class divergence measurements (§3.5 (a), (b))."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medfl.common.losses import BalancedSoftmaxLoss, class_count_tensor

DEFAULT_FREE_U = 3.0  # weight of the prior-alignment term (README value)


def prior_divergence(p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """d = 2 - 2 cos(p, h) per sample (the BYOL-style normalised L2 of §3.4): (B, D), (B, D) -> (B,) in [0, 4]."""
    if p.shape != h.shape:
        raise ValueError(f"projector output {tuple(p.shape)} and prior features {tuple(h.shape)} differ in shape")
    return 2 - 2 * (F.normalize(p, dim=-1) * F.normalize(h, dim=-1)).sum(dim=-1)


class FedMASLoss(nn.Module):
    """Local objective of §3.4: ``L = BSM(z1, y) + BSM(z2, y) + free_u * mean_i d(p_i, h_i)``.

    ``forward(z1, p, z2, h, y)`` returns ``(L, d)``; ``d`` (B,) is detached, for the D_tr accumulator.
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, free_u: float = DEFAULT_FREE_U) -> None:
        super().__init__()
        self.bsm = BalancedSoftmaxLoss(class_counts)
        self.free_u = free_u

    def forward(
        self, z1: torch.Tensor, p: torch.Tensor, z2: torch.Tensor, h: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = prior_divergence(p, h)
        loss = self.bsm(z1, y) + self.bsm(z2, y) + self.free_u * d.mean()
        return loss, d.detach()


class ClassDivergence:
    """Per-class divergence ``D[c] = (1/N_c) * sum_{i seen, y_i = c} d_i`` (§3.5 (a) D_pre, (b) D_tr).

    ``N_c`` is the client's class count over its full training set (not the samples seen), so a pass that
    drops a last partial batch gives at most the class mean. Feeding E epochs into one accumulator gives the
    sum over epochs of (b). Classes with ``N_c = 0`` read 0.
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor) -> None:
        self.class_counts = class_count_tensor(class_counts)
        self.sums = torch.zeros_like(self.class_counts)

    def update(self, d: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``d`` (B,) divergences, ``target`` (B,) class indices."""
        labels = target.detach().long().flatten().cpu()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.class_counts.numel()):
            raise ValueError(f"labels {labels.unique().tolist()} outside 0..{self.class_counts.numel() - 1}")
        unknown = labels[self.class_counts[labels] == 0].unique()
        if unknown.numel():
            raise ValueError(f"labels {unknown.tolist()} seen, but the client's class count for them is 0")
        self.sums.index_add_(0, labels, d.detach().flatten().cpu().double())

    def compute(self) -> torch.Tensor:
        """D (C,) float64."""
        present = self.class_counts > 0
        result = torch.zeros_like(self.sums)
        result[present] = self.sums[present] / self.class_counts[present]
        return result
