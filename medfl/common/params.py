"""Model parameters as they travel: flat dicts of numpy arrays, optionally grouped under a prefix.

Numpy arrays go through NVFlare's DXO and filters without a custom decomposer. A bundle of several models
(FedSM sends global + personalised + selector) is one flat dict whose keys carry the model name as a prefix,
``"<model>/<state_dict key>"``.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np
import torch

Params = Dict[str, np.ndarray]
SEP = "/"


def to_numpy(state_dict: Mapping[str, torch.Tensor]) -> Params:
    """Copy a torch state dict into numpy arrays (on CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}


def load_numpy(module: torch.nn.Module, params: Mapping[str, np.ndarray]) -> None:
    """Load numpy params into ``module`` strictly, keeping each tensor's dtype and device."""
    own = module.state_dict()
    missing, unexpected = set(own) - set(params), set(params) - set(own)
    if missing or unexpected:
        raise KeyError(f"parameter keys do not match the model: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    module.load_state_dict({k: torch.as_tensor(params[k]).to(own[k].dtype) for k in own})


def bundle(models: Mapping[str, Params]) -> Params:
    """``{"global": {...}, "selector": {...}}`` -> one flat dict ``{"global/w": ..., "selector/w": ...}``."""
    return {f"{name}{SEP}{key}": value for name, params in models.items() for key, value in params.items()}


def unbundle(flat: Mapping[str, np.ndarray]) -> Dict[str, Params]:
    """Inverse of :func:`bundle`."""
    models: Dict[str, Params] = {}
    for full_key, value in flat.items():
        name, _, key = full_key.partition(SEP)
        models.setdefault(name, {})[key] = value
    return models


def weighted_mean(params: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> Params:
    """``sum_k w_k * params_k / sum_k w_k`` for every key; integer entries (e.g. BN counters) are rounded back.

    Every entry stays a numpy array, 0-d ones (BN ``num_batches_tracked``) included, never a numpy scalar.
    """
    if len(params) != len(weights) or not params:
        raise ValueError(f"need one weight per model, got {len(params)} models and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {list(weights)}")
    mean = {}
    for key, first in params[0].items():
        acc = sum(np.asarray(p[key], dtype=np.float64) * (w / total) for p, w in zip(params, weights))
        integer = np.issubdtype(np.asarray(first).dtype, np.integer)
        mean[key] = np.asarray(np.rint(acc) if integer else acc, dtype=np.asarray(first).dtype)
    return mean
