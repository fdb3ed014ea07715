"""HAM10000 metadata reading and lesion-level stratified splits (generic, not tied to PRR-FL).

HAM10000 (Tschandl et al., Sci Data 2018) ships ``HAM10000_metadata.csv`` with one row per image and columns
``lesion_id, image_id, dx, dx_type, age, sex, localization, dataset`` (``dataset`` is the acquisition source:
``vidir_modern``, ``vidir_molemax``, ``rosendahl``, ``vienna_dias``) and the images as ``images/<image_id>.jpg``.
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
    "ham10000_image_path",
    "lesion_labels",
    "read_ham10000_metadata",
    "stratified_group_split",
]

HAM10000_METADATA = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx", "dataset")


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
            raise DataError(f"missing column(s) {missing}; found {reader.fieldnames}", path=csv_path)
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


def ham10000_image_path(
    root: Path | str, image_id: str, image_dir: str = "images", suffix: str = ".jpg"
) -> Path:
    """Path of ``<root>/<image_dir>/<image_id><suffix>``; `DataError` naming the file if it is absent."""
    path = Path(root) / image_dir / f"{image_id}{suffix}"
    if not path.is_file():
        raise DataError(f"HAM10000 image {image_id} listed in the metadata is missing", path=path)
    return path


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
