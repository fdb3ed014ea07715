"""Dermoscopy dataset of one PRR-FL client split, read from the CSVs of ``prepare_ham10000_prrfl.py``.

Layout (as the original's ``clientX/{train,valid,test}_clientX.csv``): ``<data_root>/<client>/<split>_<client>.csv``
with at least the columns ``image`` (PNG path relative to ``data_root``) and ``label`` (integer class). The client
folder is the NVFlare site name (``clientA`` ... ``clientD``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai import transforms as mt
from PIL import Image
from torch.utils.data import Dataset

from medfl.common.data import SAMPLE_ID
from medfl.common.errors import DataError

__all__ = ["SPLITS", "SkinLesionDataset", "build_client_datasets", "eval_transforms", "split_csv_path",
           "train_transforms"]

SPLITS = ("train", "valid", "test")
# the project's split names (datalist convention) -> the original's CSV names
SPLIT_FILES = {"training": "train", "validation": "valid", "testing": "test"}
CSV_COLUMNS = ("image", "label")
PIXEL_MAX = 255.0
DEFAULT_IMAGE_SIZE = 128
DEFAULT_NUM_CLASSES = 3


def split_csv_path(data_root: Path | str, client: str, split: str) -> Path:
    """``<data_root>/<client>/<split>_<client>.csv``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(data_root) / client / f"{split}_{client}.csv"


def _to_unit_range() -> list[Callable]:
    """Map [0, 1] to [-1, 1] (the original's ``Normalize(0.5, 0.5)``) and drop MONAI metadata."""
    return [
        mt.ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0),
        mt.EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def eval_transforms() -> mt.Compose:
    """Validation / test transform: normalisation only. Input: float tensor ``(3, H, W)`` in [0, 1]."""
    return mt.Compose(_to_unit_range())


def train_transforms(
    image_size: int = DEFAULT_IMAGE_SIZE,
    flip_prob: float = 0.5,
    brightness_limit: float = 0.2,
    brightness_prob: float = 0.75,
    blur_noise_prob: float = 0.7,
    median_radius: int = 2,
    blur_sigma: tuple[float, float] = (0.8, 1.1),
    noise_std: float = math.sqrt(30.0) / PIXEL_MAX,
    affine_prob: float = 0.85,
    shift_limit: float = 0.1,
    scale_limit: float = 0.1,
    rotate_degrees: float = 15.0,
) -> mt.Compose:
    """MONAI approximation of the original albumentations training pipeline, on ``(3, H, W)`` floats in [0, 1].

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
            mt.MedianSmooth(radius=median_radius),
            mt.RandGaussianSmooth(sigma_x=blur_sigma, sigma_y=blur_sigma, prob=1.0),
            mt.RandGaussianNoise(prob=1.0, mean=0.0, std=noise_std),
        ],
        weights=[1.0 - blur_noise_prob] + [blur_noise_prob / 3] * 3,
    )
    shift_pixels = shift_limit * image_size
    return mt.Compose(
        [
            mt.RandFlip(prob=flip_prob, spatial_axis=0),
            mt.RandFlip(prob=flip_prob, spatial_axis=1),
            mt.RandShiftIntensity(offsets=brightness_limit, prob=brightness_prob),
            blur_or_noise,
            mt.Lambda(partial(torch.clamp, min=0.0, max=1.0)),
            mt.RandAffine(
                prob=affine_prob,
                rotate_range=math.radians(rotate_degrees),
                translate_range=(shift_pixels, shift_pixels),
                scale_range=(scale_limit, scale_limit),
                padding_mode="zeros",
            ),
            *_to_unit_range(),
        ]
    )


class SkinLesionDataset(Dataset):
    """One client's split: items ``{"image": (3, H, W) float32 in [-1, 1], "label": int}``.

    ``transform`` receives the RGB image as a float tensor in [0, 1] and defaults to `eval_transforms`; use
    `train_transforms` for training. ``image_size``, when given, is checked on every image (the prepared PNGs are
    square). With several DataLoader workers use ``monai.data.DataLoader`` (or seed the MONAI transforms per
    worker) so that workers do not repeat the same random augmentations. Bad input raises `DataError` naming the
    client, the CSV (and line) or the image.
    """

    def __init__(
        self,
        data_root: Path | str,
        client: str,
        split: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_classes: int = 3,
        image_size: int | None = None,
    ) -> None:
        self.data_root = Path(data_root)
        self.client = client
        self.csv_path = split_csv_path(data_root, client, split)
        self.transform = transform if transform is not None else eval_transforms()
        self.image_size = image_size
        self.num_classes = num_classes
        self.samples = self._read_csv(num_classes)

    def _error(self, problem: str, path: Path | None = None) -> DataError:
        return DataError(problem, path=path or self.csv_path, site=self.client)

    def _read_csv(self, num_classes: int) -> list[tuple[Path, int]]:
        if not self.csv_path.is_file():
            raise self._error("split CSV not found (run data_preparation/prepare_ham10000_prrfl.py)")
        with self.csv_path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise self._error(f"missing column(s) {missing}; found {reader.fieldnames}")
            samples = []
            for line, row in enumerate(reader, start=2):
                try:
                    label = int(row["label"])
                except ValueError:
                    raise self._error(f"line {line}: label {row['label']!r} is not an integer") from None
                if not 0 <= label < num_classes:
                    raise self._error(f"line {line}: label {label} outside [0, {num_classes})")
                samples.append((self.data_root / row["image"], label))
        if not samples:
            raise self._error("no samples")
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def class_counts(self) -> list[int]:
        """Samples per class, length ``num_classes`` (FedMAS's N_{k,c} for Balanced Softmax and divergences)."""
        return np.bincount([label for _, label in self.samples], minlength=self.num_classes).tolist()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        path, label = self.samples[index]
        if not path.is_file():
            raise self._error(f"image listed in {self.csv_path.name} is missing", path)
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / PIXEL_MAX
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files
            raise self._error(f"cannot read image ({type(e).__name__}: {e})", path) from None
        if self.image_size is not None and pixels.shape[:2] != (self.image_size, self.image_size):
            raise self._error(
                f"image is {pixels.shape[1]}x{pixels.shape[0]}, expected {self.image_size}x{self.image_size} "
                "(config_train.json 'image_size' must match the prepared images)", path)
        return {"image": self.transform(torch.from_numpy(pixels).permute(2, 0, 1).contiguous()), "label": label,
                SAMPLE_ID: str(path)}


def build_client_datasets(settings, site: str) -> dict[str, SkinLesionDataset]:
    """``{"training", "validation", "testing"}`` datasets of ``site`` from a dermoscopy client's settings
    (``data_root``, ``image_size``, ``num_classes``, ``augment``: `train_transforms` on the training split)."""
    data_root = settings.path("data_root", site)
    image_size, num_classes, augment = settings.image_size, settings.num_classes, settings.augment
    if not (data_root / site).is_dir():
        raise DataError(f"no folder for this client ({site}) in the federation", path=data_root / site, site=site)
    datasets = {}
    for split, file_split in SPLIT_FILES.items():
        transform = train_transforms(image_size) if split == "training" and augment else eval_transforms()
        datasets[split] = SkinLesionDataset(data_root, site, file_split, transform, num_classes, image_size)
    return datasets
