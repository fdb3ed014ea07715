"""The prostate slices as the clients and the test script see them: the original's client transform, applied once.

The original (NVFlare ``research/fed-sm``, ``supervised_monai_prostate_learner.py`` and
``result_stat/prostate_2d_test_only.py``; ALGORITHMS.md §6.2) reads the 8-bit slices and applies, for training,
validation and test alike::

    ScaleIntensityRanged(image and label, 0..255 -> 0..1) -> Resized(256 x 256, bilinear, align_corners=True)
    -> AsDiscreted(label, threshold 0.5)

and caches the result (``CacheDataset``, cache rate 1). :func:`slice_transform` is that transform; the stored masks
are already 0/1 (the loader binarises them), so only the image is scaled. :func:`load_slices` loads one split and
applies it once.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from monai.transforms import AsDiscreted, Compose, Resized, ScaleIntensityRanged

from medfl.common.data import SAMPLE_ID, load_segmentation_pairs
from medfl.common.errors import DataError

IMAGE_SIZE = 256  # the original's Resized spatial_size
MAX_LEVEL = 255.0  # the slices hold 8-bit values (prepare_prostate_2d.py)
LABEL_THRESHOLD = 0.5  # AsDiscreted(threshold=0.5) after the label's bilinear resize
RESIZE_MODES = ("bilinear", "nearest")


def slice_transform(image_size: int = IMAGE_SIZE, resize_mode: str = "bilinear") -> Compose:
    """The original's transform of one ``{"image", "label"}`` pair ``(1, H, W)``: image 0..255 -> 0..1, image and
    label resized to ``image_size`` (``bilinear`` with ``align_corners=True``, or ``nearest``; 0 keeps the size),
    label thresholded at 0.5."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    transforms = [ScaleIntensityRanged(keys="image", a_min=0.0, a_max=MAX_LEVEL, b_min=0.0, b_max=1.0)]
    if image_size:
        corners = True if resize_mode == "bilinear" else None
        transforms.append(Resized(keys=("image", "label"), spatial_size=(image_size, image_size), mode=resize_mode,
                                  align_corners=corners))
    transforms.append(AsDiscreted(keys="label", threshold=LABEL_THRESHOLD))
    return Compose(transforms)


def check_8bit(image: np.ndarray, path: os.PathLike, site: Optional[str]) -> None:
    """The slices of ``prepare_prostate_2d.py`` hold integers 0..255; anything else (e.g. [0, 1] floats of an
    earlier preparation) would be scaled wrongly, so it is an error naming the file."""
    if not image.size:
        return
    fractional = bool(np.any(image != np.round(image)))
    if fractional or image.min() < 0 or image.max() > MAX_LEVEL:
        raise DataError(f"intensities must be 8-bit integers 0..255 (found {image.min():g}..{image.max():g}"
                        f"{', not integers' if fractional else ''}); re-run data_preparation/prepare_prostate_2d.py",
                        path=path, site=site)


def load_slices(items: Sequence[Dict], base_dir: os.PathLike, site: Optional[str] = None,
                image_size: int = IMAGE_SIZE, resize_mode: str = "bilinear") -> List[Dict]:
    """The pairs of ``items`` (a datalist split) loaded and transformed by :func:`slice_transform`, as float32
    arrays ``(1, S, S)`` (image in [0, 1], label in {0, 1}), each with its :data:`SAMPLE_ID`."""
    transform = slice_transform(image_size, resize_mode)
    pairs = []
    for pair in load_segmentation_pairs(items, base_dir, site):
        check_8bit(pair["image"], os.path.join(base_dir, pair[SAMPLE_ID]), site)
        item = transform({"image": pair["image"], "label": pair["label"]})
        pairs.append({"image": np.asarray(item["image"], dtype=np.float32),
                      "label": np.asarray(item["label"], dtype=np.float32), SAMPLE_ID: pair[SAMPLE_ID]})
    return pairs
