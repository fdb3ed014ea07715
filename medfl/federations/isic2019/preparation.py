"""Per-client datalists for FedMAS: FLamby Fed-ISIC2019, or a small demo federation from HAM10000.

``isic``: FLamby's Fed-ISIC2019 (6 centres, 8 classes MEL NV BCC AK BKL DF VASC SCC) from the ISIC 2019
training release. ``--isic-dir`` must hold
  * ``ISIC_2019_Training_Input/<image>.jpg``      the training images (25,331 JPEGs),
  * ``ISIC_2019_Training_GroundTruth.csv``        columns image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK (one-hot),
  * ``ISIC_2019_Training_Metadata.csv``           columns image, ..., lesion_id (may be empty),
and ``--split-file`` is FLamby's ``train_test_split`` CSV (columns image, center 0-5, fold train/test; from
``flamby/datasets/fed_isic2019/dataset_creation_scripts/``). ``test`` is FLamby's test split; ``valid`` is a
held-out part of FLamby's train split (``--valid-fraction``, stratified by class, whole lesions), never the
test split.

``demo``: HAM10000 images (in ``images/`` or in the public release's ``HAM10000_images_part_1/`` and
``HAM10000_images_part_2/``) and ``HAM10000_metadata.csv`` (e.g. ../shared/data/ham10000_mini). FLamby's centres
1, 2, 3, 5 are HAM10000's sources vidir_molemax, vidir_modern, rosendahl, vienna_dias; ``dx`` is mapped onto
the ISIC classes; each centre is split into train / valid / test by ``lesion_id``.

Output, one self-contained folder per client: ``<out>/center_<k>/{train,valid,test}.csv`` (columns image,
label, lesion_id; image paths relative to that folder) and ``<out>/center_<k>/images/``, plus
``<out>/summary.json`` with the class counts. The whole input (tables, labels, every image's presence and header)
is checked before anything is written; each client's folder is then built aside and swapped in, the summary last
(``medfl.common.staging``), so a failure leaves the previous output exactly as it was. Bad input exits with one
line ``error: <file>: <problem>``.

Examples:
    python data_preparation/prepare_isic2019.py isic --isic-dir data_preparation/raw/isic2019 \\
        --split-file data_preparation/raw/isic2019/train_test_split --out data_preparation/dataset_2D/fed_isic2019
    python data_preparation/prepare_isic2019.py demo --ham-dir ../shared/data/ham10000_mini \\
        --out data_preparation/demo_isic2019 --image-size 64
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medfl.common.errors import DataError
from medfl.common.inputs import image_header, read_rgb_square
from medfl.common.staging import StagedOutput
from medfl.federations.dermoscopy.ham10000 import (
    HAM10000_METADATA,
    ham10000_image_folders,
    index_images,
    locate_images,
    read_ham10000_metadata,
)
from medfl.federations.isic2019.data import ISIC_CLASSES

ISIC_IMAGE_DIR = "ISIC_2019_Training_Input"
ISIC_GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
ISIC_METADATA = "ISIC_2019_Training_Metadata.csv"
FLAMBY_CENTERS = range(6)
FLAMBY_FOLDS = ("train", "test")
HAM_SOURCE_TO_CENTER = {"vidir_molemax": 1, "vidir_modern": 2, "rosendahl": 3, "vienna_dias": 5}
HAM_DX_TO_CLASS = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AK", "bkl": "BKL", "df": "DF", "vasc": "VASC"}
SPLITS = ("train", "valid", "test")
VALID_FRACTION = 0.1
TEST_FRACTION = 0.2  # demo only; about FLamby's test share (4650 of 23247)
ISIC_IMAGE_SIZE = 224
DEMO_IMAGE_SIZE = 64
JPEG_QUALITY = 95
PROGRESS_EVERY = 500


@dataclass(frozen=True)
class Sample:
    """One labelled image: its id, class index, lesion (grouping) id and source file."""

    image: str
    label: int
    lesion: str
    source: Path


Federation = dict[int, dict[str, list[Sample]]]  # FLamby centre -> split name -> samples


def read_table(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file that must exist and have the ``required`` columns."""
    if not path.is_file():
        raise DataError("file not found", path=path)
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing columns {missing} (has {reader.fieldnames})", path=path)
        return list(reader)


def held_out(samples: Sequence[Sample], fraction: float, seed: int) -> set[str]:
    """Image ids of about ``fraction`` of each class, taking whole lesions so none is split across parts."""
    members: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        members[sample.lesion].append(sample)
    by_class: dict[int, list[str]] = defaultdict(list)
    for lesion, items in sorted(members.items()):
        by_class[Counter(s.label for s in items).most_common(1)[0][0]].append(lesion)
    rng = random.Random(seed)
    chosen: set[str] = set()
    for label in sorted(by_class):
        lesions = by_class[label]
        rng.shuffle(lesions)
        target = round(fraction * sum(len(members[lesion]) for lesion in lesions))
        taken = 0
        for lesion in lesions:
            if taken >= target:
                break
            chosen.update(s.image for s in members[lesion])
            taken += len(members[lesion])
    return chosen


def split_off(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(kept, held out) with ``held_out``'s grouping and stratification."""
    chosen = held_out(samples, fraction, seed)
    return [s for s in samples if s.image not in chosen], [s for s in samples if s.image in chosen]


def _one_hot(value: str, image: str, path: Path) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"image {image}: class value {value!r} is not a number", path=path) from None


def isic_federation(isic_dir: Path, split_file: Path, valid_fraction: float, seed: int) -> Federation:
    """FLamby Fed-ISIC2019: centre -> {train, valid, test} samples."""
    truth_file, meta_file = isic_dir / ISIC_GROUND_TRUTH, isic_dir / ISIC_METADATA
    truth = {row["image"]: row for row in read_table(truth_file, ("image", *ISIC_CLASSES))}
    lesions = {row["image"]: row["lesion_id"] for row in read_table(meta_file, ("image", "lesion_id"))}
    parts: Federation = {c: {"train": [], "test": []} for c in FLAMBY_CENTERS}
    for line, row in enumerate(read_table(split_file, ("image", "center", "fold")), start=2):
        image, fold = row["image"], row["fold"]
        if image not in truth:
            raise DataError(f"line {line}: image {image} is not in {truth_file}", path=split_file)
        if fold not in FLAMBY_FOLDS or not row["center"].isdigit() or int(row["center"]) not in FLAMBY_CENTERS:
            raise DataError(f"line {line}: expected fold train/test and center 0-5, got {row}", path=split_file)
        hot = [i for i, name in enumerate(ISIC_CLASSES) if _one_hot(truth[image][name], image, truth_file) == 1.0]
        if len(hot) != 1:
            raise DataError(f"image {image} has {len(hot)} of the 8 classes set, expected 1", path=truth_file)
        source = isic_dir / ISIC_IMAGE_DIR / f"{image}.jpg"
        parts[int(row["center"])][fold].append(Sample(image, hot[0], lesions.get(image) or image, source))
    federation = {}
    for center, part in parts.items():
        train, valid = split_off(part["train"], valid_fraction, seed)
        federation[center] = {"train": train, "valid": valid, "test": part["test"]}
    return federation


def demo_federation(ham_dir: Path, test_fraction: float, valid_fraction: float, seed: int) -> Federation:
    """HAM10000 sources as FLamby centres 1, 2, 3, 5: centre -> {train, valid, test} split by lesion."""
    meta_file = ham_dir / HAM10000_METADATA
    records = read_ham10000_metadata(ham_dir)
    folders = ham10000_image_folders(ham_dir)
    paths = locate_images([record.image_id for record in records], index_images(folders), folders, meta_file)
    by_center: dict[int, list[Sample]] = defaultdict(list)
    for line, record in enumerate(records, start=2):
        if record.source not in HAM_SOURCE_TO_CENTER or record.dx not in HAM_DX_TO_CLASS:
            raise DataError(
                f"line {line}: unknown source '{record.source}' or dx '{record.dx}' "
                f"(known: {sorted(HAM_SOURCE_TO_CENTER)}, {sorted(HAM_DX_TO_CLASS)})", path=meta_file
            )
        label = ISIC_CLASSES.index(HAM_DX_TO_CLASS[record.dx])
        by_center[HAM_SOURCE_TO_CENTER[record.source]].append(
            Sample(record.image_id, label, record.lesion_id, paths[record.image_id]))
    federation = {}
    for center, samples in sorted(by_center.items()):
        rest, test = split_off(samples, test_fraction, seed)
        train, valid = split_off(rest, valid_fraction, seed)
        federation[center] = {"train": train, "valid": valid, "test": test}
    return federation


def center_name(center: int) -> str:
    """The client (folder and site) name of FLamby centre ``center``: ``center_<k>``."""
    return f"center_{center}"


def check_images(federation: Federation) -> None:
    """Every image of the federation is present and its header readable (before anything is written)."""
    for center, parts in sorted(federation.items()):
        for samples in parts.values():
            for sample in samples:
                image_header(sample.source, site=center_name(center))


def write_image(sample: Sample, folder: Path, image_size: int, site: str) -> str:
    """Copy (``image_size`` 0) or resize to a square JPEG in ``folder`` (a staged client folder); returns the
    path relative to ``folder``."""
    relative = Path("images") / (f"{sample.image}.jpg" if image_size else sample.source.name)
    if image_size:
        read_rgb_square(sample.source, image_size, site).save(folder / relative, quality=JPEG_QUALITY)
    else:
        shutil.copyfile(sample.source, folder / relative)
    return relative.as_posix()


def write_federation(federation: Federation, out: Path, image_size: int, settings: dict) -> dict:
    """Write images, datalists and ``summary.json``; returns the summary."""
    total = sum(len(samples) for parts in federation.values() for samples in parts.values())
    done = 0
    clients = {}
    with StagedOutput() as staged:
        for center, parts in sorted(federation.items()):
            name = center_name(center)
            folder = staged.folder(out / name)
            (folder / "images").mkdir()
            counts = {}
            for split in SPLITS:
                rows = []
                for sample in parts[split]:
                    rows.append((write_image(sample, folder, image_size, name), sample.label, sample.lesion))
                    done += 1
                    if done % PROGRESS_EVERY == 0 or done == total:
                        print(f"  images {done}/{total}", flush=True)
                with open(folder / f"{split}.csv", "w", newline="") as stream:
                    writer = csv.writer(stream)
                    writer.writerow(("image", "label", "lesion_id"))
                    writer.writerows(rows)
                counts[split] = [sum(1 for s in parts[split] if s.label == c) for c in range(len(ISIC_CLASSES))]
            clients[name] = counts
            print(f"{name}: " + ", ".join(f"{s} {sum(counts[s])}" for s in SPLITS), flush=True)
        summary = {"classes": list(ISIC_CLASSES), "image_size": image_size, **settings, "class_counts": clients}
        staged.write_json(summary, out / "summary.json")
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    isic = commands.add_parser("isic", help="FLamby Fed-ISIC2019 from the ISIC 2019 training release")
    isic.add_argument("--isic-dir", type=Path, required=True, help="folder with the ISIC 2019 images and CSVs")
    isic.add_argument("--split-file", type=Path, required=True, help="FLamby's train_test_split CSV")
    isic.add_argument("--image-size", type=int, default=ISIC_IMAGE_SIZE, help="square side; 0 keeps the originals")
    demo = commands.add_parser("demo", help="demo federation from HAM10000 (centres 1, 2, 3, 5)")
    demo.add_argument("--ham-dir", type=Path, required=True,
                      help="folder with HAM10000_metadata.csv and images/ (or HAM10000_images_part_1/ and _2/)")
    demo.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    demo.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE, help="square side; 0 keeps the originals")
    for command in (isic, demo):
        command.add_argument("--out", type=Path, required=True, help="output folder")
        command.add_argument("--valid-fraction", type=float, default=VALID_FRACTION, help="share of train held out")
        command.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = {"source": args.command, "valid_fraction": args.valid_fraction, "seed": args.seed}
    try:
        if args.command == "isic":
            federation = isic_federation(args.isic_dir, args.split_file, args.valid_fraction, args.seed)
        else:
            federation = demo_federation(args.ham_dir, args.test_fraction, args.valid_fraction, args.seed)
            settings["test_fraction"] = args.test_fraction
        check_images(federation)
        print(f"writing {len(federation)} clients to {args.out}", flush=True)
        return write_federation(federation, args.out, args.image_size, settings)
    except (DataError, OSError) as error:  # bad input, or a full disk: one line, the previous output kept
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
