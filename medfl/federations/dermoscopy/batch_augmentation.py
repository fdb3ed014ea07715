"""PRR-FL's training augmentation (§2.6) for a whole batch at once: the distributions of the per-image MONAI pipeline
(`~medfl.federations.dermoscopy.transforms.train_transforms`), each image drawing its own parameters, applied as
tensor operations on the batch.

Per image, as MONAI draws them: a vertical and a horizontal flip; a brightness offset; one of identity, 5x5 median
(replicate padding), Gaussian blur (MONAI's ``erf`` kernel, truncated at 4 sigma, zero padding) and Gaussian
noise; clipping to [0, 1]; an affine map (MONAI ``RandAffine``: the output pixel at centred coordinates p reads the
input at R(angle) (S p + shift), bilinear, zeros outside). The random stream is torch's, not MONAI's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai import transforms as mt
from monai.transforms import Randomizable
from monai.utils import MAX_SEED

from .median import median_filter
from .transforms import AugmentationSpec, unit_range

__all__ = ["BatchAugmentation", "BatchDraws", "augment", "batched_train_transforms", "draw", "gaussian_blur",
           "warp"]

IDENTITY, MEDIAN, GAUSSIAN, NOISE = range(4)  # the blur-or-noise branches, in AugmentationSpec.branch_weights order
GAUSSIAN_TRUNCATION = 4.0  # MONAI GaussianFilter's kernel tail, in sigmas
INV_SQRT2 = math.sqrt(0.5)
SPATIAL_AXES = 2  # rows, columns
# a batch's tensors are small (16 x 3 x 128^2 at most): on 2 shared cores intra-op threads made the augmentation
# slower than one thread, several times so when other runs loaded the cores
AUGMENTATION_THREADS = 1


@dataclass
class BatchDraws:
    """One batch's random parameters, one row per image (rows before columns where a pair is drawn)."""

    vertical_flip: torch.Tensor  # (B,) bool
    horizontal_flip: torch.Tensor  # (B,) bool
    brightness: torch.Tensor  # (B,) offset, 0 where not drawn
    branch: torch.Tensor  # (B,) IDENTITY, MEDIAN, GAUSSIAN or NOISE
    sigma: torch.Tensor  # (B, 2) Gaussian sigma per axis, read where branch is GAUSSIAN
    noise: torch.Tensor  # (number of NOISE images, C, H, W), in their batch order
    affine: torch.Tensor  # (B,) bool
    angle: torch.Tensor  # (B,) radians
    shift: torch.Tensor  # (B, 2) pixels
    scale: torch.Tensor  # (B, 2)


def _uniform(low: float, high: float, shape, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _chance(prob: float, count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, generator=generator) < prob


def draw(shape: torch.Size, spec: AugmentationSpec, generator: torch.Generator) -> BatchDraws:
    """Draw every image's parameters for a batch of ``shape`` ``(B, C, H, W)``."""
    count, channels, height, width = shape
    branch = torch.multinomial(torch.tensor(spec.branch_weights()), count, replacement=True, generator=generator)
    noisy = int((branch == NOISE).sum())
    noise_std = _uniform(0.0, spec.noise_std, (noisy, 1, 1, 1), generator)
    brightness = _uniform(-spec.brightness_limit, spec.brightness_limit, count, generator)
    shift_limit = spec.shift_limit * torch.tensor([height, width], dtype=torch.float32)
    rotate = math.radians(spec.rotate_degrees)
    return BatchDraws(
        vertical_flip=_chance(spec.flip_prob, count, generator),
        horizontal_flip=_chance(spec.flip_prob, count, generator),
        brightness=torch.where(_chance(spec.brightness_prob, count, generator), brightness, 0.0),
        branch=branch,
        sigma=_uniform(*spec.blur_sigma, (count, SPATIAL_AXES), generator),
        noise=noise_std * torch.randn((noisy, channels, height, width), generator=generator),
        affine=_chance(spec.affine_prob, count, generator),
        angle=_uniform(-rotate, rotate, count, generator),
        shift=shift_limit * _uniform(-1.0, 1.0, (count, SPATIAL_AXES), generator),
        scale=_uniform(1.0 - spec.scale_limit, 1.0 + spec.scale_limit, (count, SPATIAL_AXES), generator),
    )


def gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """MONAI's ``erf`` kernel of each sigma (``(k,)`` -> ``(k, 2 reach + 1)``): the unit Gaussian's mass over each
    pixel, not normalised, zero beyond that sigma's tail ``int(max(4 sigma, 0.5) + 0.5)``."""
    tails = (torch.clamp(sigma * GAUSSIAN_TRUNCATION, min=0.5) + 0.5).floor()
    reach = int(tails.max())
    offsets = torch.arange(-reach, reach + 1, dtype=sigma.dtype)
    scale = INV_SQRT2 / sigma[:, None]
    kernel = 0.5 * (torch.erf(scale * (offsets + 0.5)) - torch.erf(scale * (offsets - 0.5)))
    return torch.where(offsets.abs() <= tails[:, None], kernel.clamp(min=0.0), 0.0)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``(k, C, H, W)`` images, sigma ``(k, 2)`` per image and axis, zero padding."""
    count, channels, height, width = images.shape
    planes = images.reshape(1, count * channels, height, width)
    for axis in range(SPATIAL_AXES):
        kernel = gaussian_kernels(sigma[:, axis]).repeat_interleave(channels, dim=0)
        reach = kernel.shape[1] // 2
        along_rows = axis == 0
        weight = kernel.view(count * channels, 1, -1, 1) if along_rows else kernel.view(count * channels, 1, 1, -1)
        planes = F.conv2d(planes, weight, padding=(reach, 0) if along_rows else (0, reach), groups=count * channels)
    return planes.view(count, channels, height, width)


def warp(images: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """MONAI ``RandAffine``'s resampling of ``(k, C, H, W)`` images: output pixel p (centred (row, column)
    coordinates) reads the input at R(angle) (diag(scale) p + shift), bilinear, zeros outside."""
    height, width = images.shape[-2:]
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, -sin], dim=-1), torch.stack([sin, cos], dim=-1)], dim=-2)
    linear = rotation * scale[:, None, :]
    offset = (rotation @ shift[:, :, None])[..., 0]
    # grid_sample's coordinates: (column, row), the image's edges at -1 and 1, so a pixel is 2 / side wide
    half = torch.tensor([height, width], dtype=images.dtype) / 2
    normalised = linear * half[None, None, :] / half[None, :, None]
    theta = torch.cat([normalised.flip(1, 2), (offset / half).flip(1)[..., None]], dim=2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _where(images: torch.Tensor, mask: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``op`` on the images where ``mask`` is set, the others unchanged."""
    if not bool(mask.any()):
        return images
    index = mask.nonzero().squeeze(1)
    return images.index_copy(0, index, op(images[index]))


def augment(images: torch.Tensor, draws: BatchDraws, spec: AugmentationSpec) -> torch.Tensor:
    """Apply ``draws`` to ``(B, C, H, W)`` images in [0, 1], in the per-image pipeline's order."""
    out = _where(images, draws.vertical_flip, lambda x: x.flip(-2))
    out = _where(out, draws.horizontal_flip, lambda x: x.flip(-1))
    out = out + draws.brightness.view(-1, 1, 1, 1)
    blurred = draws.branch == GAUSSIAN
    out = _where(out, draws.branch == MEDIAN, lambda x: median_filter(x, spec.median_radius))
    out = _where(out, blurred, lambda x: gaussian_blur(x, draws.sigma[blurred]))
    out = _where(out, draws.branch == NOISE, lambda x: x + draws.noise)
    out = out.clamp(0.0, 1.0)
    moved = draws.affine
    return _where(out, moved, lambda x: warp(x, draws.angle[moved], draws.shift[moved], draws.scale[moved]))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class BatchAugmentation(Randomizable):
    """The augmentation of `train_transforms`, drawn per image and applied to a ``(B, 3, H, W)`` batch in [0, 1].

    Seeded as MONAI transforms are (``set_random_state``, e.g. by the executor's seeding of the datasets); it
    draws from its own ``torch.Generator``. It runs on `AUGMENTATION_THREADS` torch threads.
    """

    def __init__(self, spec: AugmentationSpec = AugmentationSpec()) -> None:
        self.spec = spec
        self.generator = torch.Generator()
        self.generator.manual_seed(int(self.R.randint(MAX_SEED)))
        self.draws: BatchDraws | None = None

    def set_random_state(self, seed: int | None = None, state=None) -> BatchAugmentation:
        super().set_random_state(seed, state)
        self.generator.manual_seed(int(self.R.randint(MAX_SEED)))
        return self

    def randomize(self, data: torch.Tensor) -> None:
        self.draws = draw(data.shape, self.spec, self.generator)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch_threads(AUGMENTATION_THREADS):
            self.randomize(images)
            return augment(images, self.draws, self.spec)


def batched_train_transforms(spec: AugmentationSpec = AugmentationSpec()) -> mt.Compose:
    """`BatchAugmentation`, then [0, 1] -> [-1, 1]: `train_transforms` for a batch."""
    return mt.Compose([BatchAugmentation(spec), *unit_range()])
