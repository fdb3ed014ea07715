"""Losses shared by several methods: Balanced Softmax (Ren et al., NeurIPS 2020) for long-tailed client data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

TrainingLoss = Literal["ce", "bsm"]  # a classification client's ``loss`` setting
PRIOR_EPS = 1e-12  # added to the class prior before the log: absent classes get log(1e-12) ~ -27.6


def class_count_tensor(counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if tensor.numel() == 0 or (tensor < 0).any() or tensor.sum() <= 0:
        raise ValueError(f"class counts must be non-negative with a positive total, got {tensor.tolist()}")
    return tensor


class BalancedSoftmaxLoss(nn.Module):
    """Balanced Softmax / logit adjustment: ``BSM(z, y) = CE(z + log(pi + 1e-12), y)``.

    ``pi`` is the client's own class prior (``class_counts / sum``), held in the buffer ``class_counts``.
    ``logits`` (B, C), ``target`` (B,) -> mean loss. Classes absent from the client are masked by a large
    negative shift, never by NaN.
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, eps: float = PRIOR_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("class_counts", class_count_tensor(class_counts).float())

    def log_prior(self) -> torch.Tensor:
        """The logit shift log(pi + eps), shape (C,)."""
        prior = self.class_counts.double() / self.class_counts.double().sum()
        return torch.log(prior + self.eps).to(self.class_counts.dtype)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.class_counts.numel():
            raise ValueError(f"logits have {logits.shape[-1]} classes, the class counts {self.class_counts.numel()}")
        return F.cross_entropy(logits + self.log_prior().to(logits.dtype), target)


def classification_loss(name: TrainingLoss, class_counts: Sequence[int], device: torch.device | str) -> Callable:
    """A client's training loss: ``"bsm"`` Balanced Softmax over its training ``class_counts`` (BSM-FL),
    ``"ce"`` cross-entropy (FedAvg)."""
    if name == "bsm":
        return BalancedSoftmaxLoss(class_counts).to(device)
    return F.cross_entropy
