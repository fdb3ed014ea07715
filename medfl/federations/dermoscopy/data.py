"""Dermoscopy dataset of one PRR-FL client split, read from the CSVs of ``prepare_ham10000_prrfl.py``.

Layout (as the original's ``clientX/{train,valid,test}_clientX.csv``): ``<data_root>/<client>/<split>_<client>.csv``
with at least the columns ``image`` (PNG path relative to ``data_root``) and ``label`` (integer class). The client
folder is the NVFlare site name (``clientA`` ... ``clientD``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from medfl.common.data import SAMPLE_ID
from medfl.common.errors import DataError

from .batch_augmentation import batched_train_transforms
from .transforms import PIXEL_MAX, PerImage, eval_transforms, train_transforms

__all__ = ["SPLITS", "SkinLesionDataset", "build_client_datasets", "split_csv_path", "training_transform"]

SPLITS = ("train", "valid", "test")
# the project's split names (datalist convention) -> the original's CSV names
SPLIT_FILES = {"training": "train", "validation": "valid", "testing": "test"}
CSV_COLUMNS = ("image", "label")
DEFAULT_IMAGE_SIZE = 128
DEFAULT_NUM_CLASSES = 3


def split_csv_path(data_root: Path | str, client: str, split: str) -> Path:
    """``<data_root>/<client>/<split>_<client>.csv``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(data_root) / client / f"{split}_{client}.csv"


class SkinLesionDataset(Dataset):
    """One client's split: items ``{"image": (3, H, W) float32 in [-1, 1], "label": int}``.

    Each image is decoded once, on first use, and kept as ``uint8``. ``transform`` receives a batch ``(B, 3, H, W)``
    of float images in [0, 1] and defaults to `eval_transforms`; for training use `batched_train_transforms` or
    ``PerImage(train_transforms(size))``. A DataLoader fetches a batch through ``__getitems__``, so the transform
    sees the whole batch; ``dataset[i]`` is a batch of one. ``image_size``, when given, is checked on every image
    (the prepared PNGs are square). With several DataLoader workers use ``monai.data.DataLoader`` (or seed the
    transform per worker) so that workers do not repeat the same random augmentations. Bad input raises
    `DataError` naming the client, the CSV (and line) or the image.
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
        self.decoded: list[torch.Tensor | None] = [None] * len(self.samples)

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

    def pixels(self, index: int) -> torch.Tensor:
        """The ``uint8`` ``(3, H, W)`` RGB image of sample ``index``, decoded on first use and kept."""
        if self.decoded[index] is None:
            path = self.samples[index][0]
            if not path.is_file():
                raise self._error(f"image listed in {self.csv_path.name} is missing", path)
            try:
                with Image.open(path) as image:
                    pixels = np.array(image.convert("RGB"))
            except OSError as e:  # PIL's UnidentifiedImageError and truncated files
                raise self._error(f"cannot read image ({type(e).__name__}: {e})", path) from None
            if self.image_size is not None and pixels.shape[:2] != (self.image_size, self.image_size):
                raise self._error(
                    f"image is {pixels.shape[1]}x{pixels.shape[0]}, expected {self.image_size}x{self.image_size} "
                    "(config_train.json 'image_size' must match the prepared images)", path)
            self.decoded[index] = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        return self.decoded[index]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor | int]]:
        """The items of ``indices``, their images transformed together as one batch."""
        images = self.transform(torch.stack([self.pixels(index) for index in indices]).float() / PIXEL_MAX)
        return [{"image": image, "label": self.samples[index][1], SAMPLE_ID: str(self.samples[index][0])}
                for index, image in zip(indices, images)]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return self.__getitems__([index])[0]


def training_transform(settings) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training split's transform of a dermoscopy client's settings: ``augment`` off: `eval_transforms`; else
    ``augmentation`` ``batched`` (`batched_train_transforms`) or ``per_image`` (`train_transforms`, image by
    image)."""
    if not settings.augment:
        return eval_transforms()
    if settings.augmentation == "batched":
        return batched_train_transforms()
    return PerImage(train_transforms(settings.image_size))


def build_client_datasets(settings, site: str) -> dict[str, SkinLesionDataset]:
    """``{"training", "validation", "testing"}`` datasets of ``site`` from a dermoscopy client's settings
    (``data_root``, ``image_size``, ``num_classes``; ``augment`` and ``augmentation``: `training_transform`)."""
    data_root = settings.path("data_root", site)
    image_size, num_classes = settings.image_size, settings.num_classes
    if not (data_root / site).is_dir():
        raise DataError(f"no folder for this client ({site}) in the federation", path=data_root / site, site=site)
    datasets = {}
    for split, file_split in SPLIT_FILES.items():
        transform = training_transform(settings) if split == "training" else eval_transforms()
        datasets[split] = SkinLesionDataset(data_root, site, file_split, transform, num_classes, image_size)
    return datasets
