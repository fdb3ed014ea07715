"""Build the PRR-FL dermoscopy federation from HAM10000: one client per acquisition source, 3 classes.

The original PRR-FL federation (MICCAI 2021) uses HAM10000's ``vidir_modern``, ``vidir_molemax`` and
``rosendahl`` sources as clients A-C and ISIC 2017 as client D; here client D is HAM10000's fourth source,
``vienna_dias``. Classes nv=0, bkl=1, mel=2 (other diagnoses dropped), images resized to 128x128 RGB PNG, and a
train / valid / test split per client stratified by class and made per lesion (no lesion in two splits).

``--split-csv-dir`` instead reproduces the original's own split: its ``csv_folder/`` (``clientA/train_clientA.csv``
etc., columns ``image_id`` and ``label`` read; image-level, so a lesion can be in train and test; see
docs/prrfl.md) is mapped client by client and row by row onto the same layout. Its client D lists ISIC 2017
images: give their folder with ``--extra-image-dir``.

Output, the original's per-client layout::

    <out>/clients.json                                  {"clientA": "vidir_modern", ...}
    <out>/clientA/img_resize128/ISIC_0024306.png
    <out>/clientA/{train,valid,test}_clientA.csv        image (relative to <out>), label, image_id, lesion_id

The whole input (metadata, split CSVs, every image's presence and header) is checked before anything is written;
each client's folder is then built aside and swapped in, ``clients.json`` last (``medfl.common.staging``), so a
failure leaves the previous federation exactly as it was.

Usage::

    python data_preparation/prepare_ham10000_prrfl.py --ham-root /data/HAM10000 --out /data/prrfl_ham10000
    python data_preparation/prepare_ham10000_prrfl.py --ham-root /data/HAM10000 --out /data/prrfl_original \\
        --split-csv-dir PRR-FL/csv_folder --extra-image-dir /data/ISIC-2017_Training_Data ...
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medfl.common.errors import DataError
from medfl.common.inputs import image_header, read_rgb_square
from medfl.common.staging import StagedOutput
from medfl.federations.dermoscopy.data import SPLITS, split_csv_path
from medfl.federations.dermoscopy.ham10000 import (
    HAM10000_METADATA,
    Ham10000Record,
    ham10000_image_folders,
    index_images,
    lesion_labels,
    locate_images,
    read_ham10000_metadata,
    stratified_group_split,
)

CLASS_INDEX: Mapping[str, int] = {"nv": 0, "bkl": 1, "mel": 2}
DEFAULT_SOURCES = ("vidir_modern", "vidir_molemax", "rosendahl", "vienna_dias")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
DEFAULT_SEED = 1
DEFAULT_IMAGE_SIZE = 128
CSV_FIELDS = ("image", "label", "image_id", "lesion_id")
CLIENTS_JSON = "clients.json"
ORIGINAL_CSV_COLUMNS = ("image_id", "label")  # what the original's SkinDataset reads for the 3-class task
ORIGINAL_CLIENT = re.compile(r"^client[A-Z]$")
OUTSIDE_HAM10000 = "not in HAM10000"  # the source recorded for images found only in --extra-image-dir


@dataclass(frozen=True)
class ListedImage:
    """One image of a client split: its id, class index and lesion (empty when unknown, outside HAM10000)."""

    image_id: str
    label: int
    lesion_id: str


@dataclass(frozen=True)
class ClientPlan:
    """What one client gets: its source, its images per split and, per split, the file that lists them."""

    source: str
    splits: Mapping[str, Sequence[ListedImage]]
    listed_in: Mapping[str, Path]


def client_name(index: int) -> str:
    """``clientA``, ``clientB``, ... as in the original."""
    if not 0 <= index < 26:
        raise ValueError(f"at most 26 clients (clientA..clientZ) are supported, got index {index}")
    return f"client{chr(ord('A') + index)}"


def _write_png(source: Path, target: Path, image_size: int, client: str) -> None:
    read_rgb_square(source, image_size, client).save(target, format="PNG")


def _write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(text.getvalue())


def _select_records(
    records: Sequence[Ham10000Record], sources: Sequence[str], class_index: Mapping[str, int], log: Callable
) -> dict[str, list[Ham10000Record]]:
    """Records of each requested source with a kept diagnosis; errors for absent or empty sources."""
    found = {record.source for record in records}
    absent = [source for source in sources if source not in found]
    if absent:
        raise DataError(f"acquisition source(s) {absent} not in the metadata 'dataset' column; found {sorted(found)}")
    skipped = sorted(found - set(sources))
    if skipped:
        log(f"skipping acquisition source(s) not requested: {skipped}")
    selected = {source: [r for r in records if r.source == source and r.dx in class_index] for source in sources}
    empty = [source for source, rows in selected.items() if not rows]
    if empty:
        raise DataError(f"source(s) {empty} have no image with a diagnosis in {sorted(class_index)}")
    return selected


def lesion_split_plans(
    records: Sequence[Ham10000Record], metadata: Path, sources: Sequence[str], class_index: Mapping[str, int],
    fractions: Sequence[float], seed: int, log: Callable[[str], None],
) -> dict[str, ClientPlan]:
    """The default: one client per source, each split by lesion and stratified by class, images by id."""
    plans = {}
    for index, (source, rows) in enumerate(_select_records(records, sources, class_index, log).items()):
        labels = {lesion: class_index[dx] for lesion, dx in lesion_labels(rows).items()}
        parts = stratified_group_split(labels, fractions, seed)
        split_of_lesion = {lesion: split for split, lesions in zip(SPLITS, parts) for lesion in lesions}
        splits: dict[str, list[ListedImage]] = {split: [] for split in SPLITS}
        for record in sorted(rows, key=lambda r: r.image_id):
            splits[split_of_lesion[record.lesion_id]].append(
                ListedImage(record.image_id, class_index[record.dx], record.lesion_id))
        plans[client_name(index)] = ClientPlan(source, splits, dict.fromkeys(SPLITS, metadata))
    return plans


def _read_original_csv(path: Path, client: str, records: Mapping[str, Ham10000Record],
                       class_index: Mapping[str, int], listed: dict[str, str]) -> list[ListedImage]:
    """The rows of one original split CSV, checked; ``listed`` (image id -> file) catches an image listed twice."""
    if not path.is_file():
        raise DataError("split file not found", path=path, site=client)
    names = {index: dx for dx, index in class_index.items()}
    images = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in ORIGINAL_CSV_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing column(s) {missing}; found {reader.fieldnames}", path=path, site=client)
        for line, row in enumerate(reader, start=2):
            image_id, label = (row["image_id"] or "").strip(), (row["label"] or "").strip()
            if not image_id or label not in {str(index) for index in names}:
                raise DataError(f"line {line}: expected an image_id and a label in {sorted(names)} "
                                f"({', '.join(f'{i}={dx}' for i, dx in sorted(names.items()))}), got "
                                f"{image_id!r}, {label!r}", path=path, site=client)
            if image_id in listed:
                raise DataError(f"line {line}: image {image_id} is listed in {listed[image_id]} too",
                                path=path, site=client)
            listed[image_id] = path.name
            record = records.get(image_id)
            if record is not None and class_index.get(record.dx) != int(label):
                raise DataError(f"line {line}: image {image_id} has label {label} ({names[int(label)]}), but "
                                f"{HAM10000_METADATA} gives dx {record.dx}", path=path, site=client)
            images.append(ListedImage(image_id, int(label), record.lesion_id if record else ""))
    if not images:
        raise DataError("no rows", path=path, site=client)
    return images


def original_split_plans(
    split_csv_dir: Path, records: Sequence[Ham10000Record], class_index: Mapping[str, int]
) -> dict[str, ClientPlan]:
    """The original's split: ``<split_csv_dir>/client<X>/<split>_client<X>.csv`` for clients A, B, ... in order,
    rows in file order. Lesions come from the HAM10000 metadata; images outside it have none."""
    if not split_csv_dir.is_dir():
        raise DataError("split folder not found", path=split_csv_dir)
    clients = sorted(p.name for p in split_csv_dir.iterdir() if p.is_dir() and ORIGINAL_CLIENT.match(p.name))
    expected = [client_name(index) for index in range(len(clients))]
    if not clients or clients != expected:
        raise DataError(f"expected client folders clientA, clientB, ... without gaps (the original's csv_folder), "
                        f"found {clients}", path=split_csv_dir)
    by_id = {record.image_id: record for record in records}
    plans = {}
    for client in clients:
        listed: dict[str, str] = {}
        splits = {split: _read_original_csv(split_csv_path(split_csv_dir, client, split), client, by_id, class_index,
                                            listed) for split in SPLITS}
        sources = {by_id[i].source if i in by_id else OUTSIDE_HAM10000 for i in listed}
        listed_in = {split: split_csv_path(split_csv_dir, client, split) for split in SPLITS}
        plans[client] = ClientPlan(", ".join(sorted(sources)), splits, listed_in)
    return plans


def lesion_overlap(splits: Mapping[str, Sequence[ListedImage]]) -> tuple[int, int, int, int]:
    """``(test lesions also in train, test lesions, test images of those lesions, test images with a lesion)``;
    images without a known lesion are left out."""
    train = {image.lesion_id for image in splits["train"] if image.lesion_id}
    test = [image for image in splits["test"] if image.lesion_id]
    lesions = {image.lesion_id for image in test}
    return len(lesions & train), len(lesions), sum(image.lesion_id in train for image in test), len(test)


def _write_client(plan: ClientPlan, paths: Mapping[str, Path], out_dir: Path, client: str, folder: Path,
                  image_size: int, log: Callable[[str], None], progress_every: int) -> dict[str, int]:
    """Write one client's PNGs and CSVs into ``folder`` (its staged folder ``<out_dir>/<client>``)."""
    image_folder = f"img_resize{image_size}"
    (folder / image_folder).mkdir()
    total = sum(len(images) for images in plan.splits.values())
    count = 0
    for split, images in plan.splits.items():
        rows = []
        for image in images:
            _write_png(paths[image.image_id], folder / image_folder / f"{image.image_id}.png", image_size, client)
            rows.append({"image": f"{client}/{image_folder}/{image.image_id}.png", "label": image.label,
                         "image_id": image.image_id, "lesion_id": image.lesion_id})
            count += 1
            if count % progress_every == 0 or count == total:
                log(f"{client} ({plan.source}): {count}/{total} images")
        _write_csv(folder / split_csv_path(out_dir, client, split).name, rows)
        classes = Counter(row["label"] for row in rows)
        log(f"{client} {split}: {len(rows)} images, per class {dict(sorted(classes.items()))}")
    return {split: len(images) for split, images in plan.splits.items()}


def prepare_federation(
    ham_root: Path | str,
    out_dir: Path | str,
    sources: Sequence[str] = DEFAULT_SOURCES,
    class_index: Mapping[str, int] = CLASS_INDEX,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = DEFAULT_SEED,
    image_size: int = DEFAULT_IMAGE_SIZE,
    log: Callable[[str], None] = print,
    progress_every: int = 100,
    split_csv_dir: Path | str | None = None,
    extra_image_dirs: Sequence[Path | str] = (),
) -> dict[str, dict[str, int]]:
    """Write the federation under ``out_dir``; return ``{client: {split: number of images}}``.

    With ``split_csv_dir`` the clients and splits are the original's CSVs (``sources``, ``fractions`` and
    ``seed`` do not apply), else one lesion-level split per source. Every listed image is looked up in the
    HAM10000 image folders (then in ``extra_image_dirs``) and its header read before anything is written, so a
    missing or corrupt file fails fast, naming the file.
    """
    ham_root, out_dir = Path(ham_root), Path(out_dir)
    if len(fractions) != len(SPLITS):
        raise ValueError(f"need {len(SPLITS)} split fractions {SPLITS}, got {list(fractions)}")
    records = read_ham10000_metadata(ham_root)
    if split_csv_dir is None:
        plans = lesion_split_plans(records, ham_root / HAM10000_METADATA, sources, class_index, fractions, seed, log)
    else:
        plans = original_split_plans(Path(split_csv_dir), records, class_index)
        for client, plan in plans.items():
            shared, lesions, images, known = lesion_overlap(plan.splits)
            log(f"{client}: {shared} of {lesions} test lesions also in its train split ({images} of {known} test "
                f"images with a HAM10000 lesion id)")
    folders = [*ham10000_image_folders(ham_root), *map(Path, extra_image_dirs)]
    found = index_images(folders)
    paths = {}
    for client, plan in plans.items():
        for split, images in plan.splits.items():
            site = client if split_csv_dir is not None else None  # a client's own CSV, not the shared metadata
            paths[client, split] = locate_images([i.image_id for i in images], found, folders, plan.listed_in[split],
                                                 site)
            for path in paths[client, split].values():
                image_header(path, client)

    summary: dict[str, dict[str, int]] = {}
    with StagedOutput() as staged:
        for client, plan in plans.items():
            client_paths = {i: p for split in SPLITS for i, p in paths[client, split].items()}
            summary[client] = _write_client(plan, client_paths, out_dir, client, staged.folder(out_dir / client),
                                            image_size, log, progress_every)
        staged.write_json({client: plan.source for client, plan in plans.items()}, out_dir / CLIENTS_JSON)
    log(f"wrote {len(plans)} clients to {out_dir}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ham-root", required=True, type=Path,
                        help="folder with HAM10000_metadata.csv and the images in images/ or in "
                             "HAM10000_images_part_1/ and HAM10000_images_part_2/")
    parser.add_argument("--out", required=True, type=Path, help="output folder of the federation")
    parser.add_argument("--sources", nargs="+", help=f"acquisition sources, in client order A, B, ... "
                        f"(default: {' '.join(DEFAULT_SOURCES)})")
    parser.add_argument("--fractions", nargs=3, type=float, metavar=("TRAIN", "VALID", "TEST"),
                        help=f"lesion fractions per split (default: {' '.join(map(str, DEFAULT_FRACTIONS))})")
    parser.add_argument("--seed", type=int, help=f"split seed (default: {DEFAULT_SEED})")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--split-csv-dir", type=Path,
                        help="the original PRR-FL csv_folder (clientA/train_clientA.csv, ...): reproduce its "
                             "image-level split instead of the lesion-level one")
    parser.add_argument("--extra-image-dir", type=Path, action="append", default=[],
                        help="a further folder of <image_id>.jpg for listed images not in HAM10000 (the "
                             "original's client D: ISIC 2017); repeatable")
    args = parser.parse_args(argv)
    if args.split_csv_dir is not None and (args.sources or args.fractions or args.seed is not None):
        parser.error("--sources, --fractions and --seed do not apply with --split-csv-dir")
    try:
        prepare_federation(args.ham_root, args.out, args.sources or DEFAULT_SOURCES, CLASS_INDEX,
                           args.fractions or DEFAULT_FRACTIONS, DEFAULT_SEED if args.seed is None else args.seed,
                           args.image_size, split_csv_dir=args.split_csv_dir, extra_image_dirs=args.extra_image_dir)
    except (ValueError, OSError) as error:  # bad input (DataError), or a full disk: one line
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
