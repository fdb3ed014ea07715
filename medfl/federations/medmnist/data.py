"""MedMNIST v2 ``.npz`` files (2D sets): checked reading and a torch ``Dataset`` of normalised images.

An official file (e.g. ``pathmnist.npz`` from Zenodo) holds ``{train,val,test}_images`` as uint8, grey
``(N, H, W)`` or RGB ``(N, H, W, 3)``, and ``{train,val,test}_labels`` shaped ``(N, 1)`` (re-saved files often
use ``(N,)``; both are accepted). Every problem is reported as :class:`MedMNISTFormatError` (a
:class:`~medfl.common.errors.DataError`) naming the site, the file and what is wrong.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pydantic import Field, field_validator
from torch.utils.data import Dataset

from medfl.common.errors import DataError
from medfl.common.settings import Settings

PathType = Union[str, PathLike]


@dataclass(frozen=True)
class MedMNISTInfo:
    """What a 2D MedMNIST set holds: number of classes and image channels (1 = grey, 3 = RGB)."""

    num_classes: int
    channels: int


# Single-label 2D sets of MedMNIST v2 (Yang et al., Sci Data 2023, Table 1). ChestMNIST is left out on
# purpose: it is multi-label (14 binary labels per image) and needs another loss and another label check.
MEDMNIST_2D: Dict[str, MedMNISTInfo] = {
    "pathmnist": MedMNISTInfo(num_classes=9, channels=3),
    "dermamnist": MedMNISTInfo(num_classes=7, channels=3),
    "octmnist": MedMNISTInfo(num_classes=4, channels=1),
    "pneumoniamnist": MedMNISTInfo(num_classes=2, channels=1),
    "retinamnist": MedMNISTInfo(num_classes=5, channels=3),
    "breastmnist": MedMNISTInfo(num_classes=2, channels=1),
    "bloodmnist": MedMNISTInfo(num_classes=8, channels=3),
    "tissuemnist": MedMNISTInfo(num_classes=8, channels=1),
    "organamnist": MedMNISTInfo(num_classes=11, channels=1),
    "organcmnist": MedMNISTInfo(num_classes=11, channels=1),
    "organsmnist": MedMNISTInfo(num_classes=11, channels=1),
}
DEFAULT_DATASET = "pathmnist"
SPLITS = ("train", "val", "test")

# Intensity normalisation after scaling uint8 to [0, 1]: (x - 0.5) / 0.5, i.e. [-1, 1] on every channel.
# These are the constants of MedMNIST's "getting started" example (``Normalize(mean=[.5], std=[.5])``), which
# the Flower PathMNIST example took its data code from.
NORM_MEAN = 0.5
NORM_STD = 0.5
UINT8_MAX = 255.0


class MedMNISTFormatError(DataError):
    """A MedMNIST file that cannot be used; the message reads ``[site] <file>: <what is wrong>``."""

    def __init__(self, path: PathType, problem: str, site: Optional[str] = None):
        super().__init__(problem, path=path, site=site)


def medmnist_info(dataset: str) -> MedMNISTInfo:
    """Classes and channels of a 2D MedMNIST set by its file stem (``"pathmnist"``, ``"breastmnist"``, ...)."""
    try:
        return MEDMNIST_2D[dataset]
    except KeyError:
        raise ValueError(f"unknown MedMNIST 2D set {dataset!r}; known: {', '.join(sorted(MEDMNIST_2D))}") from None


def load_medmnist_split(
    path: PathType, split: str = "train", dataset: str = DEFAULT_DATASET, site: Optional[str] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Read and check one split of a MedMNIST ``.npz`` file.

    Returns ``images`` uint8 ``(N, H, W, C)`` (grey files get ``C = 1``) and ``labels`` int64 ``(N,)`` in
    ``[0, num_classes)`` of ``dataset``. Raises :class:`MedMNISTFormatError` for an unreadable file, missing keys,
    wrong shapes or dtypes, a channel count other than the set's, an image/label count mismatch or a label out of
    range, and :class:`~medfl.common.errors.DataError` for a missing file; ``site`` is named in the message.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    info = medmnist_info(dataset)
    images, labels = _read_arrays(Path(path), site, f"{split}_images", f"{split}_labels")
    images = _check_images(path, site, split, images, info, dataset)
    labels = _check_labels(path, site, split, labels, len(images), info.num_classes, dataset)
    return images, labels


def _read_arrays(path: Path, site: Optional[str], *keys: str) -> Tuple[np.ndarray, ...]:
    """The arrays under ``keys`` of an ``.npz`` file, loaded without pickle."""
    if not path.is_file():
        raise DataError("MedMNIST file not found (see docs/medmnist.md for where to get it)", path=path, site=site)
    unreadable = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)
    try:
        archive = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise MedMNISTFormatError(path, f"not a readable .npz archive ({type(exc).__name__}: {exc})", site) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise MedMNISTFormatError(path, "is a single .npy array, not an .npz archive of splits", site)
    with archive:
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise MedMNISTFormatError(path, f"missing key(s) {missing}; the file has {sorted(archive.files)}", site)
        try:
            return tuple(archive[key] for key in keys)
        except unreadable as exc:
            raise MedMNISTFormatError(path, f"cannot read an array ({type(exc).__name__}: {exc})", site) from exc


def _check_images(
    path: PathType, site: Optional[str], split: str, images: np.ndarray, info: MedMNISTInfo, dataset: str
) -> np.ndarray:
    key = f"{split}_images"
    if images.dtype != np.uint8:
        raise MedMNISTFormatError(path, f"{key} has dtype {images.dtype}; MedMNIST images are uint8 (0..255)", site)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise MedMNISTFormatError(path, f"{key} has shape {images.shape}; expected (N, H, W) or (N, H, W, 3)", site)
    if len(images) == 0:
        raise MedMNISTFormatError(path, f"{key} holds no images", site)
    if images.shape[-1] != info.channels:
        raise MedMNISTFormatError(
            path,
            f"{key} has {images.shape[-1]} channel(s) but {dataset} images have {info.channels}; "
            "is the dataset name right?",
            site,
        )
    return images


def _check_labels(
    path: PathType, site: Optional[str], split: str, labels: np.ndarray, num_images: int, num_classes: int,
    dataset: str,
) -> np.ndarray:
    key = f"{split}_labels"
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise MedMNISTFormatError(path, f"{key} has shape {labels.shape}; expected (N,) or (N, 1) class indices", site)
    if not np.issubdtype(labels.dtype, np.integer):
        raise MedMNISTFormatError(path, f"{key} has dtype {labels.dtype}; expected integer class indices", site)
    if len(labels) != num_images:
        raise MedMNISTFormatError(path, f"{split} has {num_images} images but {len(labels)} labels", site)
    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        bad = np.unique(labels[out_of_range]).tolist()
        raise MedMNISTFormatError(
            path, f"{key} has label(s) {bad} outside [0, {num_classes}) of {dataset} ({num_classes} classes)", site
        )
    return labels.astype(np.int64)


class MedMNISTDataset(Dataset):
    """MedMNIST samples as MONAI-style dicts ``{"image": float32 (C, H, W), "label": int64 ()}``.

    ``image = (uint8 / 255 - mean) / std`` with the defaults :data:`NORM_MEAN`, :data:`NORM_STD` (range [-1, 1]).
    ``indices`` (optional) selects the samples of one client, e.g. from its split file; they are copied out, so
    the full arrays can be freed once every client's subset is made.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: Optional[Sequence[int]] = None,
        mean: float = NORM_MEAN,
        std: float = NORM_STD,
    ):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must be shaped ({len(images)},), got {labels.shape}")
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            images, labels = images[indices], labels[indices]
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std

    @classmethod
    def from_npz(
        cls,
        path: PathType,
        split: str = "train",
        dataset: str = DEFAULT_DATASET,
        indices: Optional[Sequence[int]] = None,
        site: Optional[str] = None,
    ) -> "MedMNISTDataset":
        """One split of a checked MedMNIST file (see :func:`load_medmnist_split`), optionally a subset of it."""
        images, labels = load_medmnist_split(path, split, dataset, site)
        return cls(images, labels, indices)

    @property
    def image_size(self) -> int:
        """Side length of the (square) images: 28 for MedMNIST, 64/128/224 for the MedMNIST+ files."""
        return self.images.shape[1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div(UINT8_MAX)
        return {
            "image": (image - self.mean) / self.std,
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
        }


class MedMNISTSource(Settings):
    """Where a site (or the server) finds a MedMNIST set: the official ``<data_root>/<dataset>.npz``."""

    dataset: str = Field(DEFAULT_DATASET, description="the MedMNIST 2D set (pathmnist, breastmnist, ...)")
    data_root: str = Field(description="folder holding the official <dataset>.npz; DATASET_ROOT allowed")
    eval_batch_size: int = Field(50, ge=1, description="batch size of evaluation (the seed's: 50)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        medmnist_info(value)
        return value

    def npz_path(self, site: str) -> Path:
        return self.path("data_root", site) / f"{self.dataset}.npz"
