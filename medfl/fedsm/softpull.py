"""SoftPull, the personalised-model update of FedSM (Xu et al., CVPR 2022, Alg. 1)."""

from __future__ import annotations

from typing import Dict, Mapping

import numpy as np

from medfl.common.errors import DataError
from medfl.common.params import Params


def check_same_variables(personal: Mapping[str, Params]) -> None:
    """Every client's personalised model must hold the variables of the first, with their shapes; otherwise a
    :class:`DataError` naming the client and the variable. (The original aggregator silently leaves a missing
    variable out of the other clients' sums, so their weights no longer add up to 1.)"""
    if not personal:
        return
    reference_client, reference = next(iter(personal.items()))
    for client, params in personal.items():
        missing, extra = sorted(set(reference) - set(params)), sorted(set(params) - set(reference))
        if missing or extra:
            what = f"lacks the variable '{missing[0]}'" if missing else f"has an unknown variable '{extra[0]}'"
            raise DataError(f"personalised model {what} ({len(missing)} missing, {len(extra)} unknown, against "
                            f"{reference_client}); SoftPull needs the same variables from every client", site=client)
        for key, value in params.items():
            if np.shape(value) != np.shape(reference[key]):
                raise DataError(f"personalised model variable '{key}' has shape {np.shape(value)}, "
                                f"{reference_client}'s has {np.shape(reference[key])}", site=client)


def soft_pull(personal: Mapping[str, Params], lam: float = 0.7) -> Dict[str, Params]:
    """``p_k <- lam * p_k + (1 - lam) / (N - 1) * sum_{j != k} p_j`` for every client ``k``.

    Args:
        personal: ``{client: params}`` of the clients' locally updated personalised models (N >= 1), every one
            with the same variables and shapes (:func:`check_same_variables`).
        lam: weight a client keeps on its own model (``lam = 1`` keeps models local).

    Returns:
        ``{client: params}`` with each key in the input's dtype. Integer entries are rounded to the nearest
        integer (the original leaves them as floats, which the client's ``load_state_dict`` then truncates); the
        default networks have none. With N = 1 the model is returned unchanged (the original has no other model
        to pull towards and multiplies it by ``lam``).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"SoftPull lambda must be in [0, 1], got {lam}")
    check_same_variables(personal)
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
            dtype = np.asarray(ref).dtype
            result[client][key] = np.rint(mixed).astype(dtype) if np.issubdtype(dtype, np.integer) else mixed.astype(dtype)
    return result
