"""Check a multi-site nuclei folder and write one seeded training / validation / testing datalist per site.

Input (see docs/harmofl_data.md for converting DSB2018, MoNuSeg, Kumar, CPM to it)::

    <data_root>/<site>/images/<stem>.png|.tif|.tiff|.jpg|.jpeg
    <data_root>/<site>/masks/<stem>.png|.tif|.tiff      instance ids (0 = background) or binary

Every pair of every site is paired by stem and read once (size, channels, mask values are checked) and every
site split before any datalist is written, so a bad file fails here, naming the site and the file, rather than
in the middle of a federated round; the datalists are then swapped in together (``medfl.common.staging``), so a
failure leaves the previous ones exactly as they were. Output (paths relative to
``--data_root``)::

    <output_dir>/datalist_nuclei/<site>.json
        {"training": [{"image": "<site>/images/a.png", "label": "<site>/masks/a.png"}, ...],
         "validation": [...], "testing": [...]}

Demo::

    python data_preparation/make_demo_nuclei.py --output_dir data_preparation/raw/demo_nuclei
    python data_preparation/prepare_nuclei.py --data_root data_preparation/raw/demo_nuclei --output_dir data_preparation
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Sequence

from medfl.common.errors import DataError
from medfl.common.staging import StagedOutput
from medfl.federations.nuclei.data import (
    DEFAULT_FRACTIONS,
    IMAGES,
    INTENSITY_MODES,
    find_pairs,
    load_pair,
    split_site,
)

DATALIST_DIR = "datalist_nuclei"


def site_folders(data_root: Path, sites: Sequence[str] = ()) -> Dict[str, Path]:
    """``{site: folder}``: the named sites, or every sub-folder of ``data_root`` that holds ``images/``."""
    if sites:
        return {site: data_root / site for site in sites}
    found = {p.name: p for p in sorted(data_root.iterdir()) if (p / IMAGES).is_dir()} if data_root.is_dir() else {}
    if not found:
        raise DataError(f"no site folders with an '{IMAGES}' sub-folder", path=data_root)
    return found


def prepare(data_root: Path, output_dir: Path, sites: Sequence[str] = (), seed: int = 0,
            fractions: Sequence[float] = DEFAULT_FRACTIONS, channels: int = 3,
            intensity: str = "dtype") -> Dict[str, Dict[str, int]]:
    """Check every pair of every site and split each site by image, then write every site's datalist;
    ``{site: {split: count}}``."""
    datalists = {}
    for site, folder in site_folders(data_root, sites).items():
        pairs = {stem: (image, mask) for stem, image, mask in find_pairs(folder, site)}
        for image, mask in pairs.values():
            load_pair(image, mask, site, channels, intensity)
        datalists[site] = {
            split: [{"image": pairs[stem][0].relative_to(data_root).as_posix(),
                     "label": pairs[stem][1].relative_to(data_root).as_posix()} for stem in stems]
            for split, stems in split_site(list(pairs), site, seed, fractions).items()
        }
    with StagedOutput() as staged:
        for site, datalist in datalists.items():
            staged.write_json(datalist, output_dir / DATALIST_DIR / f"{site}.json")
    return {site: {split: len(items) for split, items in datalist.items()} for site, datalist in datalists.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", type=Path, required=True, help="folder holding one sub-folder per site")
    parser.add_argument("--output_dir", type=Path, default=Path("data_preparation"))
    parser.add_argument("--sites", nargs="*", default=(), help="site sub-folders (default: all with images/)")
    parser.add_argument("--split", type=float, nargs=3, default=DEFAULT_FRACTIONS, metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="channels the network takes")
    parser.add_argument("--intensity", choices=INTENSITY_MODES, default="dtype",
                        help="scale to [0, 1] by the pixel type's maximum or per image (min-max)")
    args = parser.parse_args(argv)
    try:
        summary = prepare(args.data_root, args.output_dir, args.sites, args.seed, args.split, args.channels,
                          args.intensity)
    except (DataError, OSError) as e:  # bad input, or a full disk: one line, the previous output kept
        sys.exit(f"error: {e}")
    for site, counts in summary.items():
        print(f"{site}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " images")
    print(f"datalists written to {args.output_dir / DATALIST_DIR}")


if __name__ == "__main__":
    main()
