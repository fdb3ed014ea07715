"""Camelyon17 histology patches (WILDS layout) as five HarmoFL hospitals: metadata, splits, dataset.

WILDS ``camelyon17_v1.0`` layout (also written by ``data_preparation/make_demo_camelyon17.py``)::

    <root>/metadata.csv   columns ",patient,node,x_coord,y_coord,tumor,slide,center,split" (one row per patch)
    <root>/patches/patient_<PPP>_node_<N>/patch_patient_<PPP>_node_<N>_x_<X>_y_<Y>.png   (96x96 RGB)

``center`` 0..4 becomes the site ``hospital1`` .. ``hospital5`` (the original's sites '1'..'5'); ``tumor`` is
the label (0 normal, 1 tumour). One slide is one ``patient_<PPP>_node_<N>`` folder. The WILDS ``split`` and
``slide`` columns are not used.

Per-hospital splits (ALGORITHMS.md §1.5): a seeded held-out test part (whole slides by default, see
:func:`split_hospital`), then validation = the last ``floor(0.2 n)`` patches of the remaining train list in
metadata order, without shuffling, as in the original.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from medfl.common.data import SAMPLE_ID, SPLITS, datalist_path, read_datalist
from medfl.common.errors import DataError
from medfl.common.images import read_image
from medfl.common.splits import seeded_split, site_seed

__all__ = [
    "METADATA",
    "NUM_HOSPITALS",
    "PATCH_SIZE",
    "Camelyon17Dataset",
    "PatchRecord",
    "camelyon17_datasets",
    "cap_records",
    "hospital_name",
    "load_patch",
    "patch_path",
    "read_metadata",
    "split_hospital",
    "to_datalist",
]

METADATA = "metadata.csv"
REQUIRED_COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "center")
NUM_HOSPITALS = 5
NUM_CLASSES = 2
PATCH_SIZE = 96
PIXEL_MAX = 255.0
TEST_UNITS = ("slide", "patch")
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.2  # the original's "last 20 %" of each train list


def hospital_name(center: int) -> str:
    """Site name of WILDS ``center`` 0..4: ``hospital1`` .. ``hospital5``."""
    return f"hospital{center + 1}"


def slide_name(patient: int, node: int) -> str:
    """``patient_<PPP>_node_<N>``: the WILDS folder of one slide."""
    return f"patient_{patient:03d}_node_{node}"


def patch_path(patient: int, node: int, x: int, y: int) -> str:
    """Path of one patch relative to the dataset root, as WILDS names it."""
    slide = slide_name(patient, node)
    return f"patches/{slide}/patch_{slide}_x_{x}_y_{y}.png"


@dataclass(frozen=True)
class PatchRecord:
    """One metadata row: the patch file (relative to the root), its label, hospital index and slide."""

    image: str
    label: int
    center: int
    slide: str


def read_metadata(root: Union[str, os.PathLike]) -> List[PatchRecord]:
    """All rows of ``<root>/metadata.csv`` in file order, checked: integer fields, ``center`` in 0..4 and
    ``tumor`` in {0, 1}. Problems raise :class:`DataError` naming the file, the line and the hospital."""
    path = Path(root) / METADATA
    if not path.is_file():
        raise DataError("Camelyon17 metadata not found (expected the WILDS camelyon17_v1.0 folder)", path=path)
    records = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing column(s) {missing}; found {reader.fieldnames}", path=path)
        for line, row in enumerate(reader, start=2):
            try:
                values = {c: int(row[c]) for c in REQUIRED_COLUMNS}
            except (TypeError, ValueError):
                raise DataError(f"line {line}: non-integer value in {[row.get(c) for c in REQUIRED_COLUMNS]}",
                                path=path) from None
            center, label = values["center"], values["tumor"]
            if not 0 <= center < NUM_HOSPITALS:
                raise DataError(f"line {line}: center {center} out of range 0..{NUM_HOSPITALS - 1}", path=path)
            if not 0 <= label < NUM_CLASSES:
                raise DataError(f"line {line}: tumor label {label} out of range 0..{NUM_CLASSES - 1}",
                                path=path, site=hospital_name(center))
            image = patch_path(values["patient"], values["node"], values["x_coord"], values["y_coord"])
            records.append(PatchRecord(image, label, center, slide_name(values["patient"], values["node"])))
    if not records:
        raise DataError("no rows", path=path)
    return records


def cap_records(records: Sequence[PatchRecord], max_patches: Optional[int], seed: int, site: str) -> List[PatchRecord]:
    """A seeded random subset of at most ``max_patches`` records, kept in their original order (quick runs)."""
    if max_patches is None or len(records) <= max_patches:
        return list(records)
    keep = np.sort(np.random.default_rng(site_seed(seed, site)).choice(len(records), max_patches, replace=False))
    return [records[i] for i in keep]


def split_hospital(
    records: Sequence[PatchRecord],
    site: str,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_unit: str = "slide",
) -> Dict[str, List[PatchRecord]]:
    """Split one hospital's records into ``training`` / ``validation`` / ``testing``.

    * test: ``test_fraction`` of the hospital's slides (``test_unit="slide"``, the default: no slide is in
      both train and test, so near-identical neighbouring patches cannot leak) or of its patches
      (``"patch"``), chosen by :func:`~medfl.common.splits.seeded_split` with a seed derived from
      ``seed`` and ``site``. The released split (``data.pkl``) is not available, so this is our choice.
    * validation: the last ``floor(val_fraction * n)`` of the ``n`` remaining records, in metadata order,
      unshuffled, as the original; training: the rest.

    Every split must be non-empty, else :class:`DataError` naming the site.
    """
    if test_unit not in TEST_UNITS:
        raise ValueError(f"test_unit must be one of {TEST_UNITS}, got {test_unit!r}")

    def unit(record: PatchRecord) -> str:
        return record.slide if test_unit == "slide" else record.image

    _, test_units = seeded_split({unit(r) for r in records}, (1 - test_fraction, test_fraction), site_seed(seed, site))
    held_out = set(test_units)
    train = [r for r in records if unit(r) not in held_out]
    num_val = math.floor(val_fraction * len(train))
    splits = {
        "training": train[: len(train) - num_val],
        "validation": train[len(train) - num_val :],
        "testing": [r for r in records if unit(r) in held_out],
    }
    empty = [name for name, part in splits.items() if not part]
    if empty:
        sizes = {name: len(part) for name, part in splits.items()}
        raise DataError(f"too few patches or {test_unit}s for a non-empty {'/'.join(empty)} split: {sizes} from "
                        f"{len({unit(r) for r in records})} {test_unit}(s)", site=site)
    return splits


def to_datalist(splits: Dict[str, Sequence[PatchRecord]]) -> Dict[str, List[Dict]]:
    """The JSON datalist: ``{split: [{"image": relative path, "label": 0|1, "slide": name}, ...]}``."""
    return {name: [{"image": r.image, "label": r.label, "slide": r.slide} for r in part]
            for name, part in splits.items()}


def load_patch(path: Union[str, os.PathLike], site: Optional[str] = None, patch_size: int = PATCH_SIZE) -> torch.Tensor:
    """One patch as ``torchvision``'s ``ToTensor`` gives it: float32 ``(3, H, W)`` in [0, 1].

    The file must be an 8-bit RGB (or RGBA: alpha is dropped) ``patch_size`` square, else :class:`DataError`.
    """
    array = read_image(path, site)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8 or array.shape != (patch_size, patch_size, 3):
        raise DataError(f"expected an 8-bit RGB {patch_size}x{patch_size} patch, got shape {array.shape} "
                        f"dtype {array.dtype}", path=path, site=site)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float() / PIXEL_MAX


class Camelyon17Dataset(Dataset):
    """One hospital's split of Camelyon17 patches, transformed as the original: ``ToTensor()`` only.

    Items: ``{"image": float32 (3, 96, 96) in [0, 1], "label": int64 scalar}`` (0 normal, 1 tumour).
    Patches are read lazily; labels are checked when the dataset is built.
    """

    def __init__(self, items: Sequence[Dict], base_dir: Union[str, os.PathLike], site: Optional[str] = None,
                 patch_size: int = PATCH_SIZE):
        self.base_dir = Path(base_dir)
        self.site = site
        self.patch_size = patch_size
        self.items = []
        for item in items:
            if "image" not in item or "label" not in item:
                raise DataError(f"datalist item without 'image' and 'label': {item}", site=site)
            label = item["label"]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
                raise DataError(f"label {label!r} out of range 0..{NUM_CLASSES - 1}",
                                path=self.base_dir / item["image"], site=site)
            self.items.append((item["image"], label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        image, label = self.items[index]
        return {"image": load_patch(self.base_dir / image, self.site, self.patch_size),
                "label": torch.tensor(label, dtype=torch.int64), SAMPLE_ID: image}


def camelyon17_datasets(datalist: Union[str, os.PathLike], base_dir: Union[str, os.PathLike], site: str,
                        splits: Sequence[str] = SPLITS) -> Dict[str, Camelyon17Dataset]:
    """``{split: Camelyon17Dataset}`` of ``site`` from ``<datalist>/<site>.json`` (or the file ``datalist``)."""
    path = datalist_path(datalist, site)
    return {split: Camelyon17Dataset(read_datalist(path, split, site), base_dir, site) for split in splits}
