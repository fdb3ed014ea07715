"""Write per-hospital Camelyon17 datalists for the HarmoFL job from the WILDS ``camelyon17_v1.0`` folder.

WILDS ``center`` 0..4 becomes the site ``hospital1`` .. ``hospital5``. For each hospital: a seeded held-out test
part (whole slides by default; ``--test_unit patch`` for a patch-level split), then validation = the last 20 %
of the remaining train list in metadata order, unshuffled, as the original. Output (paths relative to
``--data_root``)::

    <output_dir>/datalist_camelyon17/hospital<k>.json
        {"training": [{"image": "patches/.../patch_....png", "label": 0|1, "slide": "patient_004_node_4"}, ...],
         "validation": [...], "testing": [...]}

Every patch of every hospital is checked (present, PNG header readable) and every hospital split before any
datalist is written; the datalists are then swapped in together (``medfl.common.staging``), so a failure leaves
the previous ones exactly as they were.

Real data (see docs/harmofl_data.md for the download)::

    python data_preparation/prepare_camelyon17.py --data_root /data/camelyon17_v1.0 --output_dir data_preparation

Demo::

    python data_preparation/make_demo_camelyon17.py --output_dir data_preparation/raw/demo_camelyon17
    python data_preparation/prepare_camelyon17.py --data_root data_preparation/raw/demo_camelyon17 \
        --output_dir data_preparation
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional

from medfl.common.errors import DataError
from medfl.common.inputs import image_header
from medfl.common.staging import StagedOutput
from medfl.federations.camelyon17.data import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    PATCH_SIZE,
    TEST_UNITS,
    cap_records,
    hospital_name,
    read_metadata,
    split_hospital,
    to_datalist,
)

DATALIST_DIR = "datalist_camelyon17"


def prepare(data_root: Path, output_dir: Path, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION,
            val_fraction: float = DEFAULT_VAL_FRACTION, test_unit: str = "slide",
            max_patches_per_hospital: Optional[int] = None) -> Dict[str, Dict[str, int]]:
    """Check every hospital's patches and split it, then write every hospital's datalist.

    Returns ``{site: {split: patch count}}``. A missing or unreadable patch raises :class:`DataError` naming the
    hospital and the file, before anything is written.
    """
    by_hospital: Dict[str, list] = {}
    for record in read_metadata(data_root):
        by_hospital.setdefault(hospital_name(record.center), []).append(record)
    splits_of_site = {}
    for site in sorted(by_hospital):
        records = cap_records(by_hospital[site], max_patches_per_hospital, seed, site)
        for record in records:
            path = data_root / record.image
            if not path.is_file():
                raise DataError("patch listed in metadata.csv not found", path=path, site=site)
            width, height = image_header(path, site)
            if (width, height) != (PATCH_SIZE, PATCH_SIZE):
                raise DataError(f"patch is {width}x{height} pixels, expected {PATCH_SIZE}x{PATCH_SIZE}",
                                path=path, site=site)
        splits_of_site[site] = split_hospital(records, site, seed, test_fraction, val_fraction, test_unit)
    with StagedOutput() as staged:
        for site, splits in splits_of_site.items():
            staged.write_json(to_datalist(splits), output_dir / DATALIST_DIR / f"{site}.json")
    return {site: {name: len(part) for name, part in splits.items()} for site, splits in splits_of_site.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", type=Path, required=True, help="folder holding metadata.csv and patches/")
    parser.add_argument("--output_dir", type=Path, default=Path("data_preparation"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test_fraction", type=float, default=DEFAULT_TEST_FRACTION)
    parser.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION)
    parser.add_argument("--test_unit", choices=TEST_UNITS, default="slide",
                        help="hold out whole slides (default) or single patches for testing")
    parser.add_argument("--max_patches_per_hospital", type=int, default=None,
                        help="seeded random subset per hospital before splitting, for quick runs")
    args = parser.parse_args(argv)
    try:
        summary = prepare(args.data_root, args.output_dir, args.seed, args.test_fraction, args.val_fraction,
                          args.test_unit, args.max_patches_per_hospital)
    except (DataError, OSError) as e:  # bad input, or a full disk: one line, the previous output kept
        sys.exit(f"error: {e}")
    for site, counts in summary.items():
        print(f"{site}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " patches")
    print(f"datalists written to {args.output_dir / DATALIST_DIR}")


if __name__ == "__main__":
    main()
