"""Model parameters as they travel: flat dicts of numpy arrays, optionally grouped under a prefix.

Numpy arrays go through NVFlare's DXO and filters without a custom decomposer. A bundle of several models
(FedSM sends global + personalised + selector) is one flat dict whose keys carry the model name as a prefix,
``"<model>/<state_dict key>"``.
"""

from __future__ import annotations

from typing import Dict, Iterator, Mapping, Sequence, Tuple

import numpy as np
import torch

Params = Dict[str, np.ndarray]
SEP = "/"


def to_numpy(state_dict: Mapping[str, torch.Tensor], copy: bool = True) -> Params:
    """A torch state dict as numpy arrays (on CPU): copies, or with ``copy=False`` views of the CPU tensors (no
    memory; they change when the tensors do, so only for arrays sent before the model trains again)."""
    if not copy:
        return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    return {k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}


def load_numpy(module: torch.nn.Module, params: Mapping[str, np.ndarray]) -> None:
    """Load numpy params into ``module`` strictly, keeping each tensor's dtype and device."""
    own = module.state_dict()
    missing, unexpected = set(own) - set(params), set(params) - set(own)
    if missing or unexpected:
        raise KeyError(f"parameter keys do not match the model: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    module.load_state_dict({k: torch.as_tensor(params[k]).to(own[k].dtype) for k in own})


def tensor_layout(module: torch.nn.Module) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """``{state_dict key: (shape, dtype)}`` of ``module``: what :func:`adopt_numpy` checks arrays against."""
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def _state_tensors(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def release_tensors(module: torch.nn.Module) -> None:
    """Give every parameter and buffer of ``module`` an empty storage: for a model whose values were sent and are
    replaced by the next :func:`adopt_numpy` (its optimizer state, keyed by the parameters, stays)."""
    for tensor in _state_tensors(module).values():
        tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)


def adopt_numpy(module: torch.nn.Module, params: Mapping[str, np.ndarray],
                layout: Mapping[str, Tuple[Tuple[int, ...], torch.dtype]]) -> None:
    """Load numpy params into ``module`` as :func:`load_numpy` does (the keys and shapes of ``layout`` exactly, each
    tensor's dtype and device kept), using every writable CPU array of the right dtype as the tensor's storage
    instead of copying it (the caller keeps no other use of ``params``)."""
    missing, unexpected = set(layout) - set(params), set(params) - set(layout)
    if missing or unexpected:
        raise KeyError(f"parameter keys do not match the model: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    tensors = _state_tensors(module)
    for key, (shape, dtype) in layout.items():
        array = np.asarray(params[key])
        if tuple(array.shape) != shape:
            raise KeyError(f"parameter {key} has shape {tuple(array.shape)}, the model's is {shape}")
        tensors[key].data = adopt_array(array, tensors[key].device, dtype)


def adopt_array(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``array`` as a tensor on ``device`` with ``dtype``: the array's own memory when it is a writable, contiguous
    CPU array of that dtype going to the CPU (the caller keeps no other use of it), else a copy."""
    shareable = array.flags.writeable and array.flags.c_contiguous and torch.device(device).type == "cpu"
    value = torch.from_numpy(array) if shareable else torch.as_tensor(array).clone()
    return value.to(device=device, dtype=dtype)


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


CHUNK_ELEMENTS = 1 << 20  # elements per pass over a whole layer: temporaries of a few MB, not of the layer


def chunks(size: int) -> Iterator[slice]:
    """Consecutive slices of :data:`CHUNK_ELEMENTS` covering ``range(size)`` (of a flattened array)."""
    return (slice(start, start + CHUNK_ELEMENTS) for start in range(0, size, CHUNK_ELEMENTS))


def weighted_mean(params: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> Params:
    """``sum_k w_k * params_k / sum_k w_k`` for every key; integer entries (e.g. BN counters) are rounded back.

    Accumulated in float64, :data:`CHUNK_ELEMENTS` elements at a time, into two float64 buffers of a chunk made
    once per call: a layer of 100 M weights (FedSM's VGG-11 selector) needs no float64 copy of itself, and no pass
    allocates (fresh temporaries would each be mapped and page-faulted in under the server's fixed mmap threshold).
    Every entry stays a numpy array, 0-d ones (BN ``num_batches_tracked``) included, never a numpy scalar.
    """
    if len(params) != len(weights) or not params:
        raise ValueError(f"need one weight per model, got {len(params)} models and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {list(weights)}")
    mean = {}
    acc_buffer, term_buffer = np.empty(CHUNK_ELEMENTS), np.empty(CHUNK_ELEMENTS)
    for key, first in params[0].items():
        first = np.asarray(first)
        integer = np.issubdtype(first.dtype, np.integer)
        out = np.empty(first.shape, dtype=first.dtype)
        flat_out = out.reshape(-1)
        flats = [np.asarray(p[key]).reshape(-1) for p in params]
        for part in chunks(flat_out.size):
            size = len(flat_out[part])
            acc, term = acc_buffer[:size], term_buffer[:size]
            acc.fill(0.0)
            for flat, w in zip(flats, weights):  # the clients' order, as sum() added them before
                np.multiply(flat[part], w / total, out=term, dtype=np.float64)
                acc += term
            flat_out[part] = np.rint(acc) if integer else acc
        mean[key] = out
    return mean
