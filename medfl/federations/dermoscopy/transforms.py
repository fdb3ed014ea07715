"""The dermoscopy images' transforms: PRR-FL's normalisation and its training augmentation (§2.6), image by image.

A dataset applies its transform to a batch ``(B, 3, H, W)`` of float images in [0, 1]: `eval_transforms` works on
any shape; `PerImage` runs a per-image pipeline such as `train_transforms` on each image of the batch in turn.
``batch_augmentation`` draws the same augmentation for a whole batch at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from monai import transforms as mt
from monai.transforms import Randomizable

__all__ = ["PIXEL_MAX", "AugmentationSpec", "PerImage", "eval_transforms", "train_transforms", "unit_range"]

PIXEL_MAX = 255.0
NOISE_VARIANCE_MAX = 30.0  # albumentations' GaussNoise var_limit upper bound, on the 0-255 scale


@dataclass(frozen=True)
class AugmentationSpec:
    """The probabilities and limits of the original's training augmentation (§2.6), for both pipelines.

    Flips ``flip_prob`` per axis; brightness offset ``U(-brightness_limit, brightness_limit)`` with
    ``brightness_prob``; with ``blur_noise_prob`` one of a median of radius ``median_radius``, a Gaussian blur with
    sigma ``U(blur_sigma)`` per axis, Gaussian noise with std ``U(0, noise_std)``; clip to [0, 1]; with
    ``affine_prob`` a rotation ``U(+-rotate_degrees)``, a shift ``U(+-shift_limit)`` of the side per axis and a
    scale ``1 + U(+-scale_limit)`` per axis, zero padding.
    """

    flip_prob: float = 0.5
    brightness_limit: float = 0.2
    brightness_prob: float = 0.75
    blur_noise_prob: float = 0.7
    median_radius: int = 2
    blur_sigma: tuple[float, float] = (0.8, 1.1)
    noise_std: float = math.sqrt(NOISE_VARIANCE_MAX) / PIXEL_MAX
    affine_prob: float = 0.85
    shift_limit: float = 0.1
    scale_limit: float = 0.1
    rotate_degrees: float = 15.0

    def branch_weights(self) -> list[float]:
        """``OneOf`` weights of identity, median, Gaussian blur, Gaussian noise."""
        return [1.0 - self.blur_noise_prob] + [self.blur_noise_prob / 3] * 3


def unit_range() -> list[Callable]:
    """Map [0, 1] to [-1, 1] (the original's ``Normalize(0.5, 0.5)``) and drop MONAI metadata."""
    return [
        mt.ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0),
        mt.EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def eval_transforms() -> mt.Compose:
    """Validation / test transform: normalisation only. Input: float images in [0, 1], any shape."""
    return mt.Compose(unit_range())


def train_transforms(image_size: int, spec: AugmentationSpec = AugmentationSpec()) -> mt.Compose:
    """MONAI approximation of the original albumentations training pipeline, on one ``(3, H, W)`` image in [0, 1].

    * ``VerticalFlip(.5)``, ``HorizontalFlip(.5)``: `RandFlip` on each spatial axis.
    * ``RandomBrightness(0.2, p=.75)`` (adds up to +-20 % of the pixel range): `RandShiftIntensity`.
    * ``OneOf[MedianBlur(5), GaussianBlur(5), GaussNoise(var 5..30)]`` with p=.7: MONAI `OneOf` with an identity
      branch of weight 0.3; 5x5 median (radius 2); Gaussian sigma in [0.8, 1.1] (OpenCV's sigma for 3x3 and 5x5
      kernels); Gaussian noise with std drawn from [0, sqrt(30)/255]. Values are then clipped to [0, 1].
    * ``ShiftScaleRotate(0.1, 0.1, 15 deg, border 0, p=.85)``: `RandAffine` with zero padding; the scale is drawn
      per axis (albumentations draws one isotropic factor).
    * ``Normalize(0.5, 0.5)``: [0, 1] -> [-1, 1].
    """
    blur_or_noise = mt.OneOf(
        [
            mt.Identity(),
            mt.MedianSmooth(radius=spec.median_radius),
            mt.RandGaussianSmooth(sigma_x=spec.blur_sigma, sigma_y=spec.blur_sigma, prob=1.0),
            mt.RandGaussianNoise(prob=1.0, mean=0.0, std=spec.noise_std),
        ],
        weights=spec.branch_weights(),
    )
    shift_pixels = spec.shift_limit * image_size
    return mt.Compose(
        [
            mt.RandFlip(prob=spec.flip_prob, spatial_axis=0),
            mt.RandFlip(prob=spec.flip_prob, spatial_axis=1),
            mt.RandShiftIntensity(offsets=spec.brightness_limit, prob=spec.brightness_prob),
            blur_or_noise,
            mt.Lambda(partial(torch.clamp, min=0.0, max=1.0)),
            mt.RandAffine(
                prob=spec.affine_prob,
                rotate_range=math.radians(spec.rotate_degrees),
                translate_range=(shift_pixels, shift_pixels),
                scale_range=(spec.scale_limit, spec.scale_limit),
                padding_mode="zeros",
            ),
            *unit_range(),
        ]
    )


class PerImage(Randomizable):
    """A per-image transform applied to each image of a batch in turn (the original's per-sample augmentation and
    random stream); seeding it seeds the wrapped transform as if it were the dataset's own."""

    def __init__(self, transform: mt.Compose) -> None:
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state=None) -> PerImage:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        """Each call of the wrapped transform draws its own parameters."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])
