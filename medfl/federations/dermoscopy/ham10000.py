"""HAM10000 metadata reading and lesion-level stratified splits (generic, not tied to PRR-FL).

HAM10000 (Tschandl et al., Sci Data 2018) ships ``HAM10000_metadata.csv`` with one row per image and columns
``lesion_id, image_id, dx, dx_type, age, sex, localization, dataset`` (``dataset`` is the acquisition source:
``vidir_modern``, ``vidir_molemax``, ``rosendahl``, ``vienna_dias``) and the images as ``<image_id>.jpg`` in two
archives, unpacked as ``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/`` (or gathered in ``images/``).
Several images can show the same lesion, so splits must be made per lesion to avoid leakage.
"""

from __future__ import annotations

import csv
import math
import random
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medfl.common.errors import DataError

__all__ = [
    "HAM10000_METADATA",
    "Ham10000Record",
    "HAM10000_IMAGE_FOLDERS",
    "ham10000_image_folders",
    "index_images",
    "lesion_labels",
    "locate_images",
    "read_ham10000_metadata",
    "stratified_group_split",
]

HAM10000_METADATA = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx", "dataset")
# image folders of a download, searched in this order: one folder, or the public release's two archives
HAM10000_IMAGE_FOLDERS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2")
IMAGE_SUFFIX = ".jpg"
SOURCE_COLUMN_HINT = (
    "'dataset' is the acquisition source, a column of the metadata in the Harvard Dataverse release "
    "(doi:10.7910/DVN/DBW86T); copies of earlier versions lack it"
)


@dataclass(frozen=True)
class Ham10000Record:
    """One metadata row: the image, its lesion, the diagnosis and the acquisition source (``dataset`` column)."""

    lesion_id: str
    image_id: str
    dx: str
    source: str


def read_ham10000_metadata(root: Path | str, metadata_name: str = HAM10000_METADATA) -> list[Ham10000Record]:
    """Read ``<root>/<metadata_name>``; `DataError` naming the file for a missing file, column or empty value."""
    csv_path = Path(root) / metadata_name
    if not csv_path.is_file():
        raise DataError("HAM10000 metadata not found", path=csv_path)
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            hint = f" ({SOURCE_COLUMN_HINT})" if "dataset" in missing else ""
            raise DataError(f"missing column(s) {missing}; found {reader.fieldnames}{hint}", path=csv_path)
        records = []
        for line, row in enumerate(reader, start=2):
            empty = [column for column in REQUIRED_COLUMNS if not (row[column] or "").strip()]
            if empty:
                raise DataError(f"line {line}: empty value(s) in {empty}", path=csv_path)
            records.append(
                Ham10000Record(row["lesion_id"].strip(), row["image_id"].strip(), row["dx"].strip(),
                               row["dataset"].strip())
            )
    if not records:
        raise DataError("no rows", path=csv_path)
    return records


def ham10000_image_folders(root: Path | str) -> list[Path]:
    """Those of the :data:`HAM10000_IMAGE_FOLDERS` that exist under ``root``; `DataError` naming ``root`` if none."""
    root = Path(root)
    folders = [root / name for name in HAM10000_IMAGE_FOLDERS if (root / name).is_dir()]
    if not folders:
        raise DataError(f"no image folder: expected {HAM10000_IMAGE_FOLDERS[0]}/ or "
                        f"{' and '.join(f'{name}/' for name in HAM10000_IMAGE_FOLDERS[1:])}", path=root)
    return folders


def index_images(folders: Sequence[Path]) -> dict[str, Path]:
    """``image_id -> path`` of every ``<image_id>.jpg`` in ``folders`` (not recursive); an image found in two
    folders is taken from the first."""
    images: dict[str, Path] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise DataError("image folder not found", path=folder)
        for path in sorted(Path(folder).iterdir()):
            if path.suffix.lower() == IMAGE_SUFFIX and not path.name.startswith("."):
                images.setdefault(path.stem, path)
    return images


def locate_images(image_ids: Iterable[str], found: Mapping[str, Path], folders: Sequence[Path],
                  listed_in: Path | str, site: str | None = None) -> dict[str, Path]:
    """``image_id -> path`` of every id from ``found`` (:func:`index_images` of ``folders``); `DataError` naming
    the site, the list ``listed_in``, the first missing image, the folders searched and how many are missing."""
    image_ids = list(dict.fromkeys(image_ids))
    missing = [image_id for image_id in image_ids if image_id not in found]
    if missing:
        searched = ", ".join(f"{folder}/" for folder in folders)
        more = f" ({len(missing) - 1} more listed images are missing too)" if len(missing) > 1 else ""
        raise DataError(f"image {missing[0]} listed here is in none of {searched}{more}", path=listed_in, site=site)
    return {image_id: found[image_id] for image_id in image_ids}


def lesion_labels(records: Iterable[Ham10000Record]) -> dict[str, str]:
    """``lesion_id -> dx``; `DataError` naming the lesion if its images carry different diagnoses."""
    labels: dict[str, str] = {}
    for record in records:
        previous = labels.setdefault(record.lesion_id, record.dx)
        if previous != record.dx:
            raise DataError(f"lesion {record.lesion_id} has images with different diagnoses: {previous}, {record.dx}")
    return labels


def _largest_remainder(count: int, fractions: Sequence[float]) -> list[int]:
    """Split ``count`` items into parts proportional to ``fractions`` that sum exactly to ``count``."""
    shares = [count * fraction for fraction in fractions]
    sizes = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - sizes[i], reverse=True)
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    return sizes


def stratified_group_split(
    group_labels: Mapping[str, Hashable], fractions: Sequence[float], seed: int
) -> list[list[str]]:
    """Split groups (e.g. lesions) into ``len(fractions)`` parts, stratified by the group label.

    Within each label the sorted group ids are shuffled with ``random.Random(seed)`` and cut by the
    largest-remainder method, so every part gets ``count * fraction`` groups of that label rounded to whole
    groups, the parts together hold every group exactly once, and ties in the rounding favour earlier parts.
    A label with a single group therefore lands in the part with the largest fraction.
    """
    if not fractions or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    by_label: dict[Hashable, list[str]] = defaultdict(list)
    for group, label in group_labels.items():
        by_label[label].append(group)
    rng = random.Random(seed)
    parts: list[list[str]] = [[] for _ in fractions]
    for label in sorted(by_label, key=str):
        groups = sorted(by_label[label])
        rng.shuffle(groups)
        start = 0
        for part, size in zip(parts, _largest_remainder(len(groups), fractions)):
            part.extend(groups[start : start + size])
            start += size
    return parts
