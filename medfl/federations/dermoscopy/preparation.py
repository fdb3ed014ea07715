"""Build the PRR-FL dermoscopy federation from HAM10000: one client per acquisition source, 3 classes.

The original PRR-FL federation (MICCAI 2021) uses HAM10000's ``vidir_modern``, ``vidir_molemax`` and
``rosendahl`` sources as clients A-C and ISIC 2017 as client D; here client D is HAM10000's fourth source,
``vienna_dias``. Classes nv=0, bkl=1, mel=2 (other diagnoses dropped), images resized to 128x128 RGB PNG, and a
train / valid / test split per client stratified by class and made per lesion (no lesion in two splits).

Output, the original's per-client layout::

    <out>/clients.json                                  {"clientA": "vidir_modern", ...}
    <out>/clientA/img_resize128/ISIC_0024306.png
    <out>/clientA/{train,valid,test}_clientA.csv        image (relative to <out>), label, image_id, lesion_id

Usage::

    python data_preparation/prepare_ham10000_prrfl.py --ham-root /data/HAM10000 --out /data/prrfl_ham10000
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from PIL import Image

from medfl.common.errors import DataError
from medfl.common.io import atomic_path, atomic_write_json
from medfl.federations.dermoscopy.data import SPLITS, split_csv_path
from medfl.federations.dermoscopy.ham10000 import (
    Ham10000Record,
    ham10000_image_path,
    lesion_labels,
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


def client_name(index: int) -> str:
    """``clientA``, ``clientB``, ... as in the original."""
    if not 0 <= index < 26:
        raise ValueError(f"at most 26 clients (clientA..clientZ) are supported, got index {index}")
    return f"client{chr(ord('A') + index)}"


def _write_png(source: Path, target: Path, image_size: int) -> None:
    with Image.open(source) as image:
        resized = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    with atomic_path(target) as temporary:
        resized.save(temporary, format="PNG")


def _write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as temporary:
        temporary.write_text(text.getvalue())


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
) -> dict[str, dict[str, int]]:
    """Write the federation under ``out_dir``; return ``{client: {split: number of images}}``.

    Every listed image is checked before anything is written, so a missing file fails fast, naming the file.
    """
    ham_root, out_dir = Path(ham_root), Path(out_dir)
    if len(fractions) != len(SPLITS):
        raise ValueError(f"need {len(SPLITS)} split fractions {SPLITS}, got {list(fractions)}")
    selected = _select_records(read_ham10000_metadata(ham_root), sources, class_index, log)
    image_paths = {r.image_id: ham10000_image_path(ham_root, r.image_id) for rows in selected.values() for r in rows}
    image_folder = f"img_resize{image_size}"

    summary: dict[str, dict[str, int]] = {}
    clients: dict[str, str] = {}
    for index, (source, records) in enumerate(selected.items()):
        client = client_name(index)
        clients[client] = source
        labels = {lesion: class_index[dx] for lesion, dx in lesion_labels(records).items()}
        parts = stratified_group_split(labels, fractions, seed)
        split_of_lesion = {lesion: split for split, lesions in zip(SPLITS, parts) for lesion in lesions}
        rows: dict[str, list[dict[str, object]]] = {split: [] for split in SPLITS}
        for count, record in enumerate(sorted(records, key=lambda r: r.image_id), start=1):
            relative = Path(client, image_folder, f"{record.image_id}.png")
            _write_png(image_paths[record.image_id], out_dir / relative, image_size)
            rows[split_of_lesion[record.lesion_id]].append(
                {"image": relative.as_posix(), "label": class_index[record.dx], "image_id": record.image_id,
                 "lesion_id": record.lesion_id}
            )
            if count % progress_every == 0 or count == len(records):
                log(f"{client} ({source}): {count}/{len(records)} images")
        for split, split_rows in rows.items():
            _write_csv(split_csv_path(out_dir, client, split), split_rows)
            classes = Counter(row["label"] for row in split_rows)
            log(f"{client} {split}: {len(split_rows)} images, per class {dict(sorted(classes.items()))}")
        summary[client] = {split: len(split_rows) for split, split_rows in rows.items()}
    atomic_write_json(clients, out_dir / CLIENTS_JSON)
    log(f"wrote {len(clients)} clients to {out_dir}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ham-root", required=True, type=Path,
                        help="folder with HAM10000_metadata.csv and images/ISIC_*.jpg")
    parser.add_argument("--out", required=True, type=Path, help="output folder of the federation")
    parser.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES),
                        help="acquisition sources, in client order A, B, ...")
    parser.add_argument("--fractions", nargs=3, type=float, default=list(DEFAULT_FRACTIONS),
                        metavar=("TRAIN", "VALID", "TEST"), help="lesion fractions per split")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    args = parser.parse_args(argv)
    try:
        prepare_federation(args.ham_root, args.out, args.sources, CLASS_INDEX, args.fractions, args.seed,
                           args.image_size)
    except ValueError as error:  # DataError included
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
