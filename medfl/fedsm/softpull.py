"""SoftPull, the personalised-model update of FedSM (Xu et al., CVPR 2022, Alg. 1)."""

from __future__ import annotations

from typing import Dict, Mapping

import numpy as np

from medfl.common.params import Params


def soft_pull(personal: Mapping[str, Params], lam: float = 0.7) -> Dict[str, Params]:
    """``p_k <- lam * p_k + (1 - lam) / (N - 1) * sum_{j != k} p_j`` for every client ``k``.

    Args:
        personal: ``{client: params}`` of the clients' locally updated personalised models (N >= 1).
        lam: weight a client keeps on its own model (``lam = 1`` keeps models local; with N = 1 the
            model is returned unchanged).

    Returns:
        ``{client: params}`` with each key in the input's dtype.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"SoftPull lambda must be in [0, 1], got {lam}")
    n = len(personal)
    if n == 1:
        return {k: dict(v) for k, v in personal.items()}
    result: Dict[str, Params] = {client: {} for client in personal}
    first = next(iter(personal.values()))
    for key, ref in first.items():
        stacked = np.stack([np.asarray(p[key], dtype=np.float64) for p in personal.values()])
        total = stacked.sum(axis=0)
        for i, client in enumerate(personal):
            mixed = lam * stacked[i] + (1.0 - lam) / (n - 1) * (total - stacked[i])
            result[client][key] = np.rint(mixed).astype(ref.dtype) if np.issubdtype(ref.dtype, np.integer) else mixed.astype(ref.dtype)
    return result
