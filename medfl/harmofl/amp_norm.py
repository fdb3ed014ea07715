"""HarmoFL amplitude normalisation (Jiang et al., AAAI 2022, "local harmonisation"; ALGORITHMS.md §1.2).

Each image is moved to the frequency domain, the amplitude of its lowest frequencies is replaced by a
reference amplitude (the clients' averaged mean amplitude) and the phase is kept, so images from different
scanners share one low-frequency "style" while keeping their content.

Two modes, both fully supported (see ``docs/harmofl.md``):

* ``"paper"`` (default): the reference is an exponential moving average (momentum 0.1) of the batch-mean
  amplitude over all round-0 batches, and a square low-frequency window of half-size
  ``b = floor(min(spatial) * window_ratio)`` around DC is replaced; ``window_ratio`` defaults to 0.1, the
  default of the released ``mutate`` (the paper's own value could not be checked).
* ``"reference_code"``: what the released code computes: the reference is the mean amplitude of the first
  batch only (its ``int momentum`` truncates 0.1 to 0) and ``window_ratio`` is 0, i.e. only the DC bin is
  replaced, which for non-negative images is per-channel mean-intensity matching.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor
from torch.utils.hooks import RemovableHandle


@dataclass(frozen=True)
class AmplitudeModeDefaults:
    """Defaults of one amplitude-normalisation mode.

    Attributes:
        window_ratio: ``L``; the replaced window has half-size ``floor(min(spatial) * L)`` around DC.
        momentum: EMA momentum of the reference amplitude over batches; 0 keeps the first batch only.
    """

    window_ratio: float
    momentum: float


AMPLITUDE_MODES: dict[str, AmplitudeModeDefaults] = {
    "paper": AmplitudeModeDefaults(window_ratio=0.1, momentum=0.1),
    "reference_code": AmplitudeModeDefaults(window_ratio=0.0, momentum=0.0),
}
DEFAULT_AMPLITUDE_MODE = "paper"
MAX_WINDOW_RATIO = 0.5  # beyond it the original's window slice would start at a negative index
SUPPORTED_SPATIAL_DIMS = (2, 3)


def amplitude_mode_defaults(mode: str) -> AmplitudeModeDefaults:
    """The defaults of ``mode`` (one of ``AMPLITUDE_MODES``); raises ``ValueError`` for an unknown mode."""
    if mode not in AMPLITUDE_MODES:
        raise ValueError(f"unknown amplitude-normalisation mode {mode!r}; expected one of {sorted(AMPLITUDE_MODES)}")
    return AMPLITUDE_MODES[mode]


def _spatial_axes(spatial_dims: int) -> tuple[int, ...]:
    if spatial_dims not in SUPPORTED_SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be one of {SUPPORTED_SPATIAL_DIMS}, got {spatial_dims}")
    return tuple(range(-spatial_dims, 0))


def _working_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; other floating types are computed in float32 (torch.fft has no bf16 path)."""
    if not torch.is_floating_point(x):
        raise TypeError(f"amplitude normalisation needs a floating-point image, got dtype {x.dtype}; cast it first")
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def amplitude_spectrum(images: NdarrayOrTensor, spatial_dims: int = 2) -> torch.Tensor:
    """Unshifted amplitude ``|FFT|`` over the last ``spatial_dims`` axes, same shape as ``images``.

    Args:
        images: ``(..., C, *spatial)`` real images (numpy or torch, any device).
        spatial_dims: number of trailing spatial axes transformed (2 or 3).
    """
    x = convert_to_tensor(images, track_meta=False)
    x = x.to(_working_dtype(x))
    return torch.fft.fftn(x, dim=_spatial_axes(spatial_dims)).abs()


def _window_slices(n: int, half_size: int) -> list[slice]:
    """The frequencies ``|k| <= half_size`` (modulo ``n``) of an unshifted ``n``-point FFT axis.

    They are the slice ``[c - b, c + b]`` (``c = n // 2``) of the fftshifted axis used by the released
    ``mutate``; unshifted they are two blocks, ``0 .. b`` and ``n - b .. n - 1``, or one when they meet.
    """
    if 2 * half_size + 1 >= n:
        return [slice(0, n)]
    return [slice(0, half_size + 1)] + ([slice(n - half_size, n)] if half_size > 0 else [])


class AmplitudeNormalize(Transform):
    """Replace the low-frequency amplitude of each image by a reference amplitude, keeping the phase.

    For an image ``x`` with spectrum ``F = FFT(x) = |F| exp(i P)`` the output is
    ``Re(IFFT(A' exp(i P)))`` with ``A' = A_ref`` inside the window ``|k_d| <= b`` (per axis, modulo size)
    and ``A' = |F|`` outside, where ``b = floor(min(spatial) * window_ratio)``: the square
    ``(2b + 1) x (2b + 1)`` window around DC of the fftshifted spectrum, as in the released ``mutate``.
    ``window_ratio = 0`` replaces DC only, which for non-negative images is
    ``y_c = x_c - mean(x_c) + A_ref[c, 0, 0] / (H * W)``.

    Shapes: ``reference`` is ``(C, H, W)`` (or ``(C, H, W, D)``), an unshifted amplitude spectrum such as
    :func:`mean_amplitude` returns. The image is one ``(C, H, W)`` image or a batch ``(B, C, H, W)`` (3D
    likewise); numpy or torch (CPU or GPU), floating point. The output has the input's type, device, dtype
    and shape.

    Computation, for the whole batch at once: ``y = x + IFFT(change)``, where ``change`` is zero outside
    the window, so only the window's ``b + 1`` non-negative last-axis frequencies are transformed
    (``torch.fft.rfft`` along the last axis, full FFTs along the others). The reference must therefore be
    the amplitude of real images (symmetric, ``A(k) = A(-k)``, as every ``|FFT|`` of a real image and every
    average of them is): its negative last-axis frequencies are not read.

    Args:
        reference: ``(C, *spatial)`` non-negative reference amplitude.
        mode: ``"paper"`` (default) or ``"reference_code"``; only sets the default ``window_ratio``
            (0.1 or 0). The paper's method is the default, as the project's specification asks where the
            released code and the paper differ; ``"reference_code"`` reproduces the released code.
        window_ratio: ``L`` in ``[0, 0.5]``; ``None`` takes the mode's default.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, reference: NdarrayOrTensor, mode: str = DEFAULT_AMPLITUDE_MODE, window_ratio: float | None = None
    ) -> None:
        self.mode = mode
        self.window_ratio = amplitude_mode_defaults(mode).window_ratio if window_ratio is None else window_ratio
        if not 0.0 <= self.window_ratio <= MAX_WINDOW_RATIO:
            raise ValueError(f"window_ratio must be in [0, {MAX_WINDOW_RATIO}], got {self.window_ratio}")
        self.reference = reference

    @property
    def reference(self) -> torch.Tensor:
        """The ``(C, *spatial)`` reference amplitude (CPU tensor); assign a new one after aggregation."""
        return self._reference

    @reference.setter
    def reference(self, value: NdarrayOrTensor) -> None:
        ref = convert_to_tensor(value, track_meta=False).detach().cpu()
        ref = ref.to(_working_dtype(ref))
        _spatial_axes(ref.ndim - 1)  # validates the number of spatial axes
        if not torch.isfinite(ref).all() or (ref < 0).any():
            raise ValueError("the reference amplitude must be finite and non-negative")
        spatial = ref.shape[1:]
        half_size = math.floor(min(spatial) * self.window_ratio)
        self._last_axis_size = min(half_size, spatial[-1] // 2) + 1  # rfft frequencies 0 .. b of the last axis
        self._blocks = [
            (..., *block, slice(None))
            for block in itertools.product(*(_window_slices(n, half_size) for n in spatial[:-1]))
        ]
        self._reference = ref
        self._reference_blocks = [ref[..., : self._last_axis_size][block] for block in self._blocks]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Normalise one image ``(C, *spatial)`` or a batch ``(B, C, *spatial)``."""
        x = convert_to_tensor(img, track_meta=False)
        ref_shape = tuple(self._reference.shape)
        if x.ndim not in (len(ref_shape), len(ref_shape) + 1) or tuple(x.shape[-len(ref_shape) :]) != ref_shape:
            raise ValueError(
                f"image shape {tuple(x.shape)} does not match the reference amplitude {ref_shape}: "
                f"expected {ref_shape} or (B, *{ref_shape})"
            )
        dtype = _working_dtype(x)
        x = x.to(dtype)
        other_axes = _spatial_axes(len(ref_shape) - 1)[:-1]
        spectrum = torch.fft.fftn(torch.fft.rfft(x, dim=-1)[..., : self._last_axis_size], dim=other_axes)
        change = torch.zeros_like(spectrum)
        for block, reference in zip(self._blocks, self._reference_blocks):
            window = spectrum[block]
            magnitude = window.abs()
            phase = torch.where(magnitude > 0, window / magnitude, 1)  # exp(i angle); angle(0) = 0, as numpy
            change[block] = phase * reference.to(device=window.device, dtype=dtype) - window
        out = x + torch.fft.irfft(torch.fft.ifftn(change, dim=other_axes), n=ref_shape[-1], dim=-1)
        return convert_to_dst_type(out, dst=img)[0]


class AmplitudeNormalized(MapTransform):
    """Dictionary-based :class:`AmplitudeNormalize`: normalises ``data[key]`` for each key in ``keys``.

    Args:
        keys: keys of the images to normalise.
        reference: ``(C, *spatial)`` reference amplitude.
        mode: ``"paper"`` or ``"reference_code"`` (default ``window_ratio`` 0.1 or 0).
        window_ratio: ``L`` in ``[0, 0.5]``; ``None`` takes the mode's default.
        allow_missing_keys: do not raise if a key is missing.
    """

    backend = AmplitudeNormalize.backend

    def __init__(
        self,
        keys: KeysCollection,
        reference: NdarrayOrTensor,
        mode: str = DEFAULT_AMPLITUDE_MODE,
        window_ratio: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = AmplitudeNormalize(reference, mode=mode, window_ratio=window_ratio)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


class AmplitudeAverager:
    """Running reference amplitude of a client's images (HarmoFL round 0).

    The first batch sets ``A = mean_b |FFT(x_b)|``; each later batch updates
    ``A <- (1 - momentum) * A + momentum * mean_b |FFT(x_b)|``. ``momentum = 0`` keeps the first batch only
    (the released code, whose ``int momentum`` truncates 0.1 to 0).

    Args:
        momentum: EMA momentum in ``[0, 1]``.
        spatial_dims: number of spatial axes of the ``(B, C, *spatial)`` batches (2 or 3).
    """

    def __init__(self, momentum: float = AMPLITUDE_MODES[DEFAULT_AMPLITUDE_MODE].momentum, spatial_dims: int = 2):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        _spatial_axes(spatial_dims)
        self.momentum = momentum
        self.spatial_dims = spatial_dims
        self._value: torch.Tensor | None = None

    @property
    def value(self) -> torch.Tensor:
        """The current ``(C, *spatial)`` reference amplitude."""
        if self._value is None:
            raise RuntimeError("no batch has been seen yet: call update() first")
        return self._value

    def update(self, batch: NdarrayOrTensor) -> torch.Tensor:
        """Fold one ``(B, C, *spatial)`` batch into the running amplitude and return it."""
        if batch.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"expected a batch (B, C, *spatial) with {self.spatial_dims} spatial axes, "
                f"got shape {tuple(batch.shape)}"
            )
        batch_mean = amplitude_spectrum(batch, self.spatial_dims).mean(dim=0)
        if self._value is None:
            self._value = batch_mean
        elif self._value.shape != batch_mean.shape:
            raise ValueError(f"batch amplitude shape {tuple(batch_mean.shape)} differs from {tuple(self._value.shape)}")
        else:
            self._value = torch.lerp(self._value, batch_mean.to(self._value), self.momentum)
        return self._value


def mean_amplitude(
    batches: NdarrayOrTensor | Iterable[Any],
    mode: str = DEFAULT_AMPLITUDE_MODE,
    momentum: float | None = None,
    spatial_dims: int = 2,
    key: Hashable | None = None,
) -> torch.Tensor:
    """A client's reference amplitude ``(C, *spatial)`` from one batch or an iterable of batches.

    ``"paper"`` folds every batch in with an EMA (momentum 0.1); ``"reference_code"`` uses the first batch
    only. See :class:`AmplitudeAverager`.

    Args:
        batches: one ``(B, C, *spatial)`` array/tensor, or an iterable of them (e.g. a DataLoader); with
            ``key``, an iterable of dictionaries whose ``key`` entry is the batch.
        mode: ``"paper"`` or ``"reference_code"``; sets the default ``momentum``.
        momentum: overrides the mode's momentum.
        spatial_dims: number of spatial axes (2 or 3).
        key: dictionary key of the images when the batches are dictionaries.
    """
    momentum = amplitude_mode_defaults(mode).momentum if momentum is None else momentum
    averager = AmplitudeAverager(momentum=momentum, spatial_dims=spatial_dims)
    if isinstance(batches, (torch.Tensor, np.ndarray)):
        batches = [batches]
    for batch in batches:
        averager.update(batch if key is None else batch[key])
        if momentum == 0.0:
            break
    return averager.value


def normalize_inputs(model: torch.nn.Module, normalizer: Callable[[torch.Tensor], torch.Tensor]) -> RemovableHandle:
    """Apply ``normalizer`` to the first input of every ``model(x, ...)`` call (a forward pre-hook).

    This is where the released ``AmpNorm`` layer ran, inside ``forward``: on training batches (both
    passes of the weight-perturbed step), validation and test batches alike. Unlike a layer it adds
    nothing to the state dict, so the parameters exchanged are the network's own. Returns the hook's
    handle (``handle.remove()`` detaches it).
    """
    return model.register_forward_pre_hook(lambda _module, args: (normalizer(args[0]), *args[1:]))
