"""Datalists and the 2D segmentation dataset shared by the prostate jobs.

A datalist is the JSON file written by ``data_preparation/prepare_prostate_2d.py``::

    {"training":   [{"image": "I2CVB/Case00/image_012.nii.gz", "label": "I2CVB/Case00/label_012.nii.gz"}, ...],
     "validation": [...],
     "testing":    [...]}

Paths are relative to the dataset base directory. Every problem (missing file, empty split, unreadable
image, NaN or infinite values, image/label shape mismatch, negative or fractional mask values) raises
:class:`DataError` naming the site and the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError

SPLITS = ("training", "validation", "testing")
SAMPLE_ID = "id"  # item key naming a sample's source (its file), in datasets that know it; errors quote it


def datalist_path(datalist: os.PathLike, site: str) -> Path:
    """``datalist`` itself if it is a file, else ``<datalist>/<site>.json`` (one datalist per client)."""
    path = Path(datalist)
    return path / f"{site}.json" if path.is_dir() else path


def read_datalist(path: os.PathLike, split: str, site: Optional[str] = None, allow_empty: bool = False) -> List[Dict]:
    """Return the items of one split of a datalist, failing clearly on a missing file or empty split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError("datalist not found (prepare the data first; see README)", path=path, site=site)
    try:
        datalist = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"datalist is not valid JSON ({e})", path=path, site=site) from None
    items = datalist.get(split) if isinstance(datalist, dict) else None
    if items is None:
        raise DataError(f"datalist has no '{split}' list", path=path, site=site)
    if not items and not allow_empty:
        raise DataError(f"the '{split}' split is empty", path=path, site=site)
    return items


def check_finite(array: np.ndarray, path: os.PathLike, site: Optional[str] = None) -> np.ndarray:
    """``array`` as loaded from ``path`` if it holds no NaN or infinity (integer images never do), else
    :class:`DataError` naming the file: every loader of float images calls it once, right after reading."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(f"{bad} of {array.size} values are NaN or infinite; fix or re-export the file",
                            path=path, site=site)
    return array


def load_nifti(path: os.PathLike, site: Optional[str] = None) -> np.ndarray:
    """Load a NIfTI image as float32, with a clear error for a missing or corrupt file or non-finite values."""
    path = Path(path)
    if not path.is_file():
        raise DataError("image file not found", path=path, site=site)
    try:
        array = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as e:  # nibabel raises several types for truncated / non-NIfTI files
        raise DataError(f"cannot read NIfTI file ({type(e).__name__}: {e})", path=path, site=site) from None
    return check_finite(array, path, site)


def check_mask(label: np.ndarray, path: os.PathLike, site: Optional[str] = None) -> None:
    """A mask holds non-negative integers (0 = background, > 0 = foreground, binarised by the loaders)."""
    if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
        raise DataError("mask holds non-integer values; expected 0 (background) and positive labels", path=path,
                        site=site)
    if label.size and label.min() < 0:
        raise DataError(f"mask value {label.min():g} out of range: expected labels >= 0", path=path, site=site)


def load_segmentation_pairs(items: Sequence[Dict], base_dir: os.PathLike, site: Optional[str] = None) -> List[Dict]:
    """Load every ``{"image", "label"}`` pair of 2D slices into memory as ``(1, H, W)`` float32 arrays.

    The label is binarised (``> 0``). Shapes of image and label must match.
    """
    base_dir = Path(base_dir)
    pairs = []
    for item in items:
        image_path, label_path = base_dir / item["image"], base_dir / item["label"]
        image, label = load_nifti(image_path, site), load_nifti(label_path, site)
        if image.shape != label.shape:
            raise DataError(
                f"image shape {image.shape} does not match label shape {label.shape} ({label_path})",
                path=image_path,
                site=site,
            )
        if image.ndim != 2:
            raise DataError(f"expected a 2D slice, got shape {image.shape}", path=image_path, site=site)
        check_mask(label, label_path, site)
        pairs.append({"image": image[None], "label": (label[None] > 0).astype(np.float32), SAMPLE_ID: item["image"]})
    return pairs


class SegmentationSliceDataset(Dataset):
    """In-memory 2D slices with an optional MONAI dictionary transform (e.g. random flips) for training.

    Items are dicts with ``image`` ``(1, H, W)`` float tensor in [0, 1], ``label`` ``(1, H, W)`` in {0, 1} and, when
    the pairs name their source, its :data:`SAMPLE_ID`.
    """

    def __init__(self, pairs: Sequence[Dict], transform: Optional[Callable[[Dict], Dict]] = None):
        self.pairs = list(pairs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        pair = self.pairs[index]
        item = {"image": torch.from_numpy(pair["image"]), "label": torch.from_numpy(pair["label"])}
        if self.transform is not None:
            item = self.transform(item)
        sample = {"image": torch.as_tensor(item["image"]).float(), "label": torch.as_tensor(item["label"]).float()}
        if SAMPLE_ID in pair:
            sample[SAMPLE_ID] = pair[SAMPLE_ID]
        return sample
