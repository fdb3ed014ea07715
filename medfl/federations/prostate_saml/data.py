"""HarmoFL prostate data: 2.5-D samples (slices i-1, i, i+1 as 3 channels) and the released augmentation.

Reads what ``data_preparation/prepare_harmofl_prostate.py`` writes: per case a uint8 volume ``(H, W, D)``
in [0, 255] and its binary mask, and datalist items ``{"image", "label", "slice"}``. Images stay uint8 in
memory (a 384x384 sample is 0.4 MiB) and become float in [0, 255] per item, as the released loader fed
them (no scaling to [0, 1]).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from monai.transforms import Compose, Flipd, Identityd, OneOf, RandRotate90d

from medfl.common.data import SAMPLE_ID, SegmentationSliceDataset, check_mask, load_nifti
from medfl.common.errors import DataError

KEYS = ("image", "label")
# The released RandomRotate90 draws k from {0, 1, 2, 3, 4} (0 and 4 are the identity): identity 2/5, each
# quarter turn 1/5 -> MONAI's RandRotate90 (k uniform in 1..3) applied with probability 3/5.
ROTATE_PROB = 0.6
# The released RandomFlip flips with probability 0.75 around one of {both axes, rows, columns}:
# identity and each flip 1/4.
FLIP_CHOICES = 4


def prostate_train_augmentation() -> Compose:
    """The released training augmentation on ``{"image": (3, H, W), "label": (1, H, W)}``."""
    flips = [Identityd(KEYS), Flipd(KEYS, spatial_axis=0), Flipd(KEYS, spatial_axis=1),
             Flipd(KEYS, spatial_axis=(0, 1))]
    return Compose([
        RandRotate90d(KEYS, prob=ROTATE_PROB, max_k=3),
        OneOf(flips, weights=[1.0 / FLIP_CHOICES] * FLIP_CHOICES),
    ])


def load_prostate_samples(items: Sequence[Dict], base_dir: os.PathLike, site: Optional[str] = None) -> List[Dict]:
    """2.5-D samples ``{"image": (3, H, W) uint8, "label": (1, H, W) uint8, "id"}`` for datalist items.

    Every volume is read once. A slice without both neighbours or an image/label shape mismatch is a
    :class:`DataError` naming the file.
    """
    base_dir = Path(base_dir)
    volumes: Dict[Tuple[str, str], Tuple[np.ndarray, np.ndarray]] = {}
    samples = []
    for item in items:
        key = (item["image"], item["label"])
        if key not in volumes:
            image, label = load_nifti(base_dir / item["image"], site), load_nifti(base_dir / item["label"], site)
            if image.shape != label.shape or image.ndim != 3:
                raise DataError(f"expected image and label volumes (H, W, D) of one shape, got {image.shape} and "
                                f"{label.shape}", path=base_dir / item["image"], site=site)
            check_mask(label, base_dir / item["label"], site)
            volumes[key] = (image.astype(np.uint8), (label > 0).astype(np.uint8))
        image, label = volumes[key]
        z = int(item["slice"])
        if not 1 <= z <= image.shape[2] - 2:
            raise DataError(f"slice {z} has no neighbour on both sides (volume depth {image.shape[2]})",
                            path=base_dir / item["image"], site=site)
        samples.append({"image": np.ascontiguousarray(image[:, :, z - 1:z + 2].transpose(2, 0, 1)),
                        "label": label[None, :, :, z].copy(), SAMPLE_ID: f"{item['image']}#{z}"})
    return samples


def prostate_dataset(items: Sequence[Dict], base_dir: os.PathLike, site: Optional[str] = None,
                     augment: bool = False) -> SegmentationSliceDataset:
    """Dataset of 2.5-D samples; items are float ``image (3, H, W)`` in [0, 255] and ``label (1, H, W)``."""
    transform = prostate_train_augmentation() if augment else None
    return SegmentationSliceDataset(load_prostate_samples(items, base_dir, site), transform)
