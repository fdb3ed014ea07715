"""MAS aggregation (§3.5 (c), (d)): the client's robust factor r_k and the server's client weights alpha_k.

All functions are pure: numbers and tensors in, numbers and tensors out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DRW_BETA = 0.9999  # effective-number beta of the late 'mas_DRW' phase
DRW_START_FRACTION = 0.8  # 'mas_DRW' re-weights from round int(0.8 * total_rounds) on
AGGREGATION_METHODS = ("avg", "mas", "mas_inv", "mas_DRW")


def robust_factor(d_pre: torch.Tensor, d_tr: torch.Tensor, inverse: bool = False) -> float:
    """r_k = sum_{c in C_k} (D_pre[c] / sum D_pre) * (D_tr[c] / sum D_tr) with C_k = {c : D_pre[c] != 0} (§3.5 (c)).

    ``inverse=True`` is the 'mas_inv' variant: D_tr[c] <- 1 / D_tr[c] for c in C_k before normalising.
    Classes absent from the client (D = 0) contribute nothing; so does, in 'mas_inv', a class of C_k with
    D_tr[c] = 0 (the original divides by zero there). Raises ``ValueError`` if nothing was measured.
    """
    pre = torch.as_tensor(d_pre, dtype=torch.float64).flatten()
    tr = torch.as_tensor(d_tr, dtype=torch.float64).flatten().clone()
    if pre.shape != tr.shape:
        raise ValueError(f"D_pre has {pre.numel()} classes, D_tr {tr.numel()}")
    present = pre != 0
    if not present.any():
        raise ValueError("D_pre is 0 for every class: no divergence was measured before training")
    if inverse:
        invertible = present & (tr > 0)
        tr[invertible] = 1 / tr[invertible]
    if tr.sum() <= 0:
        raise ValueError("D_tr is 0 for every class: no divergence was measured during training")
    return float(((pre[present] / pre.sum()) * (tr[present] / tr.sum())).sum())


def _positive_total(values: Sequence[float], name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float64).flatten()
    if tensor.numel() == 0 or not torch.isfinite(tensor).all() or (tensor < 0).any() or tensor.sum() <= 0:
        raise ValueError(f"{name} must be finite, non-negative and not all 0, got {tensor.tolist()}")
    return tensor


def sample_weights(num_samples: Sequence[float]) -> list[float]:
    """'avg' (FedAvg): alpha_k = n_k / sum_j n_j."""
    n = _positive_total(num_samples, "sample counts")
    return (n / n.sum()).tolist()


def mas_weights(robust_factors: Sequence[float]) -> list[float]:
    """'mas' and 'mas_inv' (§3.5 (d)): alpha_k = r_k / sum_j r_j (the variants differ only in how r_k is formed)."""
    r = _positive_total(robust_factors, "robust factors")
    return (r / r.sum()).tolist()


def drw_weights(
    num_samples: Sequence[float],
    robust_factors: Sequence[float],
    current_round: int,
    total_rounds: int,
    beta: float = DRW_BETA,
    start_fraction: float = DRW_START_FRACTION,
) -> list[float]:
    """'mas_DRW' (§3.5 (d)): FedAvg before round int(start_fraction * total_rounds), then delayed re-weighting.

    Late rounds: q_k = (1/r_k) / sum_j (1/r_j), w_k = (1 - beta) / (1 - beta^q_k), alpha_k ~ n_k * w_k.
    """
    n = _positive_total(num_samples, "sample counts")
    if current_round < int(total_rounds * start_fraction):
        return (n / n.sum()).tolist()
    r = _positive_total(robust_factors, "robust factors")
    if n.numel() != r.numel():
        raise ValueError(f"{n.numel()} sample counts but {r.numel()} robust factors")
    if (r == 0).any():
        raise ValueError(f"'mas_DRW' needs every robust factor > 0, got {r.tolist()}")
    q = (1 / r) / (1 / r).sum()
    w = (1 - beta) / (1 - beta**q)
    alpha = n * w
    return (alpha / alpha.sum()).tolist()


def canonical_method(method: str) -> str:
    """The spelling of ``method`` in ``AGGREGATION_METHODS`` (case-insensitive, so the README's 'MAS' works)."""
    name = {m.lower(): m for m in AGGREGATION_METHODS}.get(str(method).lower())
    if name is None:
        raise ValueError(f"unknown aggregation method '{method}'; choose one of {AGGREGATION_METHODS}")
    return name


def aggregation_weights(
    method: str,
    num_samples: Sequence[float],
    robust_factors: Sequence[float] | None = None,
    current_round: int | None = None,
    total_rounds: int | None = None,
) -> list[float]:
    """Client weights alpha_k (summing to 1) for ``method`` in ``AGGREGATION_METHODS`` (case-insensitive)."""
    name = canonical_method(method)
    if name == "avg":
        return sample_weights(num_samples)
    if robust_factors is None:
        raise ValueError(f"aggregation '{name}' needs the clients' robust factors")
    if name != "mas_DRW":
        return mas_weights(robust_factors)
    if current_round is None or total_rounds is None:
        raise ValueError("aggregation 'mas_DRW' needs current_round and total_rounds")
    return drw_weights(num_samples, robust_factors, current_round, total_rounds)
