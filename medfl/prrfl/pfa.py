"""Progressive Fourier Aggregation (PFA) of PRR-FL (Chen et al., MICCAI 2021, Sec. 2.2).

The server receives each client's deputy weights. For every conv / linear weight it takes one 2-D FFT of the
(reshaped) layer per client, replaces the amplitude inside a centred low-frequency box of the shifted spectrum
by the clients' mean amplitude, keeps each client's own phase and its amplitude outside the box, and transforms
back. Every client therefore gets a different tensor. The box grows linearly over the rounds (`pfa_ratio`).

Everything here is pure: tensors in, new tensors out; no NVFlare, no model objects except in `batchnorm_keys`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import torch
from torch import nn

from medfl.common.params import Params, to_numpy

__all__ = [
    "BATCHNORM_TYPES",
    "batchnorm_keys",
    "is_bn_key_name",
    "low_frequency_box",
    "pfa_aggregate_state_dicts",
    "pfa_ratio",
    "progressive_fourier_aggregate",
    "shared_keys",
]

CONV2D_RANK = 4
LINEAR_RANK = 2
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def pfa_ratio(current_round: int, total_rounds: int, start: float = 0.7, end: float = 0.95) -> float:
    """Side ratio L of the shared low-frequency box at round ``current_round`` (0-based).

    The original schedule: ``L = start + current_round / total_rounds * (end - start)``, i.e. 0.700 at round 0
    and 0.945 at round 49 of 50 with the defaults (``--l_rate 0.7``); ``end`` itself is never reached.
    """
    if total_rounds <= 0:
        raise ValueError(f"total_rounds must be positive, got {total_rounds}")
    if not 0 <= current_round <= total_rounds:
        raise ValueError(f"current_round must lie in [0, {total_rounds}], got {current_round}")
    return start + current_round / total_rounds * (end - start)


def low_frequency_box(height: int, width: int, ratio: float) -> tuple[slice, slice]:
    """Rows and columns of the centred low-frequency box in an fftshift-ed ``height x width`` spectrum.

    Half sizes ``bh = floor(height * ratio / 2)``, ``bw = floor(width * ratio / 2)`` around the centre
    ``(floor(height / 2), floor(width / 2))``, end-exclusive as in the original: the box covers the frequencies
    ``-bh .. bh - 1`` (and likewise for columns), so it is one frequency short of symmetric. At ``ratio = 1`` it
    covers the whole spectrum for even sizes and all but the last row / column for odd sizes.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"PFA ratio must lie in [0, 1], got {ratio}")
    half_h, half_w = math.floor(height * ratio / 2), math.floor(width * ratio / 2)
    centre_h, centre_w = height // 2, width // 2
    return slice(centre_h - half_h, centre_h + half_h), slice(centre_w - half_w, centre_w + half_w)


def _to_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Conv ``(N, C, D1, D2)`` -> ``(C*D1, D2*N)`` as the original; linear ``(out, in)`` unchanged."""
    if weight.dim() == CONV2D_RANK:
        n, c, d1, d2 = weight.shape
        return weight.permute(1, 2, 3, 0).reshape(c * d1, d2 * n)
    return weight


def _from_matrix(matrix: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of `_to_matrix`."""
    if len(shape) == CONV2D_RANK:
        n, c, d1, d2 = shape
        return matrix.reshape(c, d1, d2, n).permute(3, 0, 1, 2)
    return matrix


def _client_weights(weights_k: Sequence[float] | None, num_clients: int) -> list[float]:
    """Normalised aggregation weights; equal weights ``1/K`` when ``weights_k`` is None."""
    if weights_k is None:
        return [1.0 / num_clients] * num_clients
    if len(weights_k) != num_clients:
        raise ValueError(f"got {len(weights_k)} client weights for {num_clients} clients")
    if any(w < 0 for w in weights_k) or sum(weights_k) <= 0:
        raise ValueError(f"client weights must be non-negative with a positive sum, got {list(weights_k)}")
    total = float(sum(weights_k))
    return [float(w) / total for w in weights_k]


def progressive_fourier_aggregate(
    weights: Sequence[torch.Tensor], ratio: float, weights_k: Sequence[float] | None = None
) -> list[torch.Tensor]:
    """PFA of one layer across K clients (the original ``avg_freq``, made K-agnostic).

    Args:
        weights: one tensor per client, all of the same shape: a conv2d weight ``(N, C, D1, D2)``, reshaped to
            ``(C*D1, D2*N)`` before the FFT as in the original, or a linear weight ``(out, in)``. 1-D tensors
            (biases, norm parameters) are rejected: the original never applies PFA to them, and a ``1 x n``
            matrix would get an empty box (``floor(1 * L / 2) = 0``) for any ``L < 2``.
        ratio: box side ratio L in [0, 1] (see `low_frequency_box`, `pfa_ratio`).
        weights_k: optional non-negative per-client weights of the amplitude mean; equal ``1/K`` by default
            (the original divides by a hard-coded 4 for its 4 clients).

    Returns:
        K new tensors, one per client, with the inputs' shape, dtype and device. Client k gets
        ``Re(IFFT2(A'_k * exp(i * P_k)))`` where ``P_k`` is its own phase and ``A'_k`` is the weighted mean
        amplitude inside the box and its own amplitude outside. Taking the real part keeps every phase exactly
        and, on the box's one-frequency-asymmetric border, averages the shared and own amplitudes. The FFT is
        computed in float64. The inputs are not modified.
    """
    if len(weights) == 0:
        raise ValueError("PFA needs at least one client weight tensor")
    shape, dtype = weights[0].shape, weights[0].dtype
    if len(shape) not in (CONV2D_RANK, LINEAR_RANK):
        raise ValueError(
            f"PFA applies to conv2d (4-D) or linear (2-D) weights, got shape {tuple(shape)}; "
            "average 1-D tensors instead (pfa_aggregate_state_dicts does)"
        )
    for k, weight in enumerate(weights):
        if weight.shape != shape:
            raise ValueError(f"client {k} weight has shape {tuple(weight.shape)}, client 0 has {tuple(shape)}")
        if not weight.is_floating_point():
            raise ValueError(f"client {k} weight has non-floating dtype {weight.dtype}")
    mean_weights = _client_weights(weights_k, len(weights))

    spectra = [torch.fft.fft2(_to_matrix(w.detach()).to(torch.float64)) for w in weights]
    amplitudes = [torch.fft.fftshift(spectrum.abs()) for spectrum in spectra]
    mean_amplitude = sum(w * amplitude for w, amplitude in zip(mean_weights, amplitudes))
    rows, cols = low_frequency_box(*amplitudes[0].shape, ratio)

    aggregated = []
    for spectrum, amplitude in zip(spectra, amplitudes):
        mixed = amplitude.clone()
        mixed[rows, cols] = mean_amplitude[rows, cols]
        recombined = torch.polar(torch.fft.ifftshift(mixed), spectrum.angle())
        matrix = torch.fft.ifft2(recombined).real
        aggregated.append(_from_matrix(matrix, shape).to(dtype).contiguous())
    return aggregated


def is_bn_key_name(key: str) -> bool:
    """Name rule for BatchNorm entries: a dotted component named ``bn`` (``layer1.0.bn.running_mean``).

    This is the naming of the original network and of `medfl.federations.dermoscopy.networks.VGG16Slim`. For other models pass
    ``batchnorm_keys(model).__contains__``, which dispatches on module type instead.
    """
    return "bn" in key.split(".")


def batchnorm_keys(model: nn.Module) -> frozenset[str]:
    """State-dict keys (parameters and running statistics) of every BatchNorm module of ``model``."""
    keys = set()
    for module_name, module in model.named_modules():
        if isinstance(module, BATCHNORM_TYPES):
            prefix = f"{module_name}." if module_name else ""
            keys.update(prefix + name for name in module.state_dict())
    return frozenset(keys)


def shared_keys(model: nn.Module) -> frozenset[str]:
    """State-dict keys that take part in PFA: all but the BatchNorm parameters and statistics (FedBN style).

    The PRR-FL clients send only these keys and the server sends only these back, so BatchNorm never travels.
    """
    return frozenset(model.state_dict()) - batchnorm_keys(model)


def pfa_aggregate_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    ratio: float,
    is_bn_key: Callable[[str], bool] = is_bn_key_name,
    weights_k: Sequence[float] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Apply PFA to whole (deputy) state dicts, as the original ``communication`` does per key.

    Dispatch, in this order:

    * ``is_bn_key(key)``: BatchNorm parameters and statistics stay local (FedBN style): each client keeps its own
      tensor object, unchanged.
    * non-floating tensors (counters) stay local as well.
    * 4-D tensors (conv2d weights) and 2-D tensors (linear weights): `progressive_fourier_aggregate`. The
      original dispatches on the names ``conv`` / ``linear`` plus ``weight``; dispatching on the rank gives the
      same result for the PRR-FL network without depending on module names.
    * anything else (biases, other 1-D / 3-D / 5-D tensors): the weighted mean (equal weights by default) is
      given to every client, as the original's plain-averaging branch.

    Returns one new dict per client, in the order of ``state_dicts``; inputs are not modified.
    """
    if len(state_dicts) == 0:
        raise ValueError("PFA needs at least one client state dict")
    keys = list(state_dicts[0].keys())
    for k, state in enumerate(state_dicts[1:], start=1):
        _check_same_keys(keys, state.keys(), k)
    mean_weights = _client_weights(weights_k, len(state_dicts))

    outputs: list[dict[str, torch.Tensor]] = [{} for _ in state_dicts]
    for key in keys:
        tensors = [state[key] for state in state_dicts]
        if is_bn_key(key) or not tensors[0].is_floating_point():
            new_tensors = tensors
        elif tensors[0].dim() in (CONV2D_RANK, LINEAR_RANK):
            new_tensors = progressive_fourier_aggregate(tensors, ratio, mean_weights)
        else:
            mean = sum(w * t.detach().to(torch.float64) for w, t in zip(mean_weights, tensors))
            new_tensors = [mean.to(dtype=t.dtype, copy=True) for t in tensors]
        for output, tensor in zip(outputs, new_tensors):
            output[key] = tensor
    return outputs


def _check_same_keys(reference: Collection[str], keys: Collection[str], client_index: int) -> None:
    """Raise if client ``client_index`` does not carry exactly the keys of client 0."""
    missing, extra = set(reference) - set(keys), set(keys) - set(reference)
    if missing or extra:
        raise ValueError(
            f"client {client_index} state dict differs from client 0: "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


def shared_params(model: nn.Module) -> Params:
    """The parameters that travel in PRR-FL: the model's state without BatchNorm (see `shared_keys`)."""
    keys = shared_keys(model)
    return {key: value for key, value in to_numpy(model.state_dict()).items() if key in keys}
