"""Fed-ISIC2019 datalists and the skin-lesion dataset of FedMAS (§3.4 augmentation, §3.6 data).

A datalist is a CSV with columns ``image`` (path relative to the CSV's folder, or absolute) and ``label``
(index into ``ISIC_CLASSES``), as written by ``data_preparation/prepare_isic2019.py``. Bad input raises
:class:`~medfl.common.errors.DataError` naming the client (when given) and the file.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    NormalizeIntensity,
    RandFlip,
    RandomizableTransform,
    RandRotate,
    ToTensor,
    Transform,
)
from PIL import Image
from torch.utils.data import Dataset

from medfl.common.data import SAMPLE_ID
from medfl.common.errors import DataError

ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
DATALIST_COLUMNS = ("image", "label")
PIXEL_MAX = 255.0

# training augmentation of the original (torchvision): flips, GaussianBlur((5, 9), (0.1, 5)), RandomRotation(10)
FLIP_PROB = 0.5
BLUR_KERNEL = (5, 9)  # (width, height) in pixels, as torchvision's kernel_size
BLUR_SIGMA = (0.1, 5.0)
ROTATION_DEGREES = 10.0


def read_datalist(
    csv_path: str | os.PathLike, n_classes: int = len(ISIC_CLASSES), site: str | None = None
) -> list[tuple[Path, int]]:
    """(image path, label) rows of a datalist CSV; raises :class:`DataError` naming the file and line of a bad row."""
    file = Path(csv_path)
    if not file.is_file():
        raise DataError("datalist not found (prepare the data first, see docs/fedmas.md)", path=file, site=site)
    with open(file, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in DATALIST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing columns {missing} (has {reader.fieldnames})", path=file, site=site)
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
            except ValueError:
                problem = f"line {line}: label '{row['label']}' is not an integer"
                raise DataError(problem, path=file, site=site) from None
            if not 0 <= label < n_classes:
                raise DataError(f"line {line}: label {label} outside 0..{n_classes - 1}", path=file, site=site)
            rows.append((file.parent / row["image"], label))
    if not rows:
        raise DataError("the datalist has no rows", path=file, site=site)
    return rows


def gaussian_blur(image: torch.Tensor, sigma: float, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Blur (C, H, W) with a Gaussian of ``sigma`` truncated to ``kernel_size`` = (width, height), reflect padding."""
    channels = image.shape[0]
    width, height = kernel_size
    padded = F.pad(image[None], (width // 2, width // 2, height // 2, height // 2), mode="reflect")
    for size, shape in ((width, (1, 1, 1, width)), (height, (1, 1, height, 1))):
        x = torch.arange(size, dtype=image.dtype) - (size - 1) / 2
        weights = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = (weights / weights.sum()).view(shape).repeat(channels, 1, 1, 1)
        padded = F.conv2d(padded, kernel, groups=channels)
    return padded[0]


class RandTruncatedGaussianBlur(RandomizableTransform):
    """torchvision's ``GaussianBlur(kernel_size, sigma)``: one sigma ~ U(sigma_range) per image, a Gaussian
    truncated to ``kernel_size`` = (width, height) pixels, reflect padding. (C, H, W) -> (C, H, W)."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = BLUR_KERNEL,
        sigma_range: tuple[float, float] = BLUR_SIGMA,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if any(k % 2 == 0 or k < 1 for k in kernel_size):
            raise ValueError(f"kernel sizes must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size
        self.sigma_range = sigma_range
        self.sigma = sigma_range[0]

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self.sigma = float(self.R.uniform(*self.sigma_range))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self.randomize()
        image = torch.as_tensor(img, dtype=torch.float32)
        return gaussian_blur(image, self.sigma, self.kernel_size) if self._do_transform else image


class AntialiasedResize(Transform):
    """Bilinear resize with antialiasing to (height, width), like torchvision's ``Resize`` on PIL images.

    (MONAI's ``Resize(anti_aliasing=True)`` smooths with zero padding and darkens the borders.)
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        image = torch.as_tensor(img, dtype=torch.float32)
        return F.interpolate(image[None], size=self.size, mode="bilinear", antialias=True, align_corners=False)[0]


def train_transform(image_size: int = DEFAULT_IMAGE_SIZE) -> Compose:
    """Training augmentation of §3.4 on a (3, H, W) image in [0, 1]: flips, blur, rotation, resize, normalise."""
    return Compose(
        [
            RandFlip(prob=FLIP_PROB, spatial_axis=1),
            RandFlip(prob=FLIP_PROB, spatial_axis=0),
            RandTruncatedGaussianBlur(),
            RandRotate(range_x=math.radians(ROTATION_DEGREES), prob=1.0, mode="nearest", padding_mode="zeros"),
            *eval_transform(image_size).transforms,
        ]
    )


def eval_transform(image_size: int = DEFAULT_IMAGE_SIZE) -> Compose:
    """Evaluation transform of §3.4: resize to (image_size, image_size) and normalise with ImageNet mean/std."""
    return Compose(
        [
            AntialiasedResize((image_size, image_size)),
            NormalizeIntensity(subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True),
            ToTensor(track_meta=False),
        ]
    )


def load_rgb(path: Path, site: str | None = None) -> torch.Tensor:
    """An image file as a (3, H, W) float tensor in [0, 1]; a missing or unreadable file is a :class:`DataError`."""
    if not path.is_file():
        raise DataError("image not found", path=path, site=site)
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / PIXEL_MAX
    except (OSError, ValueError) as err:  # PIL: UnidentifiedImageError (an OSError), truncated files
        raise DataError(f"cannot read the image ({err})", path=path, site=site) from None
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


class SkinLesionDataset(Dataset):
    """Images listed in one or more datalists -> ``{"image": (3, S, S) float tensor, "label": int}``.

    Images are normalised with the ImageNet mean/std. ``train=True`` applies the original's augmentation
    (§3.4); otherwise only resize and normalise. Several datalists (e.g. every client's ``test.csv``) form a
    pooled set. ``site`` names the client in error messages. Use ``monai.data.DataLoader`` so that worker
    processes draw different augmentations.
    """

    def __init__(
        self,
        datalists: str | os.PathLike | Sequence[str | os.PathLike],
        image_size: int = DEFAULT_IMAGE_SIZE,
        train: bool = False,
        n_classes: int = len(ISIC_CLASSES),
        site: str | None = None,
    ) -> None:
        files = [datalists] if isinstance(datalists, (str, os.PathLike)) else list(datalists)
        self.items = [item for file in files for item in read_datalist(file, n_classes, site)]
        self.n_classes = n_classes
        self.site = site
        self.transform = train_transform(image_size) if train else eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        path, label = self.items[index]
        return {"image": self.transform(load_rgb(path, self.site)), "label": label, SAMPLE_ID: str(path)}

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def class_counts(self) -> list[int]:
        """Samples per class (length ``n_classes``): the client's N_{k,c} for BSM and the divergence accumulators."""
        return np.bincount(self.labels, minlength=self.n_classes).tolist()
