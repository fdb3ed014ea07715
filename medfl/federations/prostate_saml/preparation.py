"""Prepare the six-site prostate MRI federation for HarmoFL (SAML layout) as 2.5-D slices and datalists.

HarmoFL's prostate task (ALGORITHMS.md §1.5): sites ``BIDMC, HK, I2CVB, ISBI, ISBI_1.5, UCL`` of the SAML
multi-site set (``<site>/CaseNN.nii.gz`` + ``<site>/CaseNN_segmentation.nii.gz``, any capitalisation). Per
volume, as the released code: intensities clipped at the 99th percentile and min-max scaled to [0, 255]
(uint8); the mask binarised. Every slice ``i`` in ``1 .. D-2`` whose mask holds prostate becomes one sample,
the slices ``i-1, i, i+1`` stacked as 3 channels. Splits:

* ``--split_level slice`` (the original): a seeded permutation of the site's slices, cut at
  ``int(0.64 n)`` and ``int(0.8 n)`` into training / validation / testing. Neighbouring slices of one patient
  land in different splits.
* ``--split_level patient``: whole cases go to one split (:func:`medfl.federations.prostate2d.preparation.split_cases`, same fractions).

Pairing, reading and percentile scaling reuse ``prepare_prostate_2d``. Output::

    <output_dir>/dataset_harmofl_prostate/<site>/<case>/image.nii.gz   (H, W, D) uint8, resized in-plane
    <output_dir>/dataset_harmofl_prostate/<site>/<case>/label.nii.gz   (H, W, D) uint8 in {0, 1}
    <output_dir>/datalist_harmofl_prostate/client_<site>.json
        {"training": [{"image": "<site>/<case>/image.nii.gz", "label": ".../label.nii.gz", "slice": i}, ...], ...}

Every case of every site is paired and header-checked before anything is written; each site's folder and then
its datalist are swapped in only when every site is built (``medfl.common.staging``), so a failure leaves the
previous output exactly as it was.

Client names are ``client_<site>`` with ``.`` replaced by ``_`` (NVFlare client names allow no dots):
``client_BIDMC, client_HK, client_I2CVB, client_ISBI, client_ISBI_1_5, client_UCL``.

    python data_preparation/prepare_harmofl_prostate.py --input_dir /data/SAML --output_dir data_preparation
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import nibabel as nib
import numpy as np

from medfl.common.errors import DataError
from medfl.common.staging import StagedOutput
from medfl.federations.prostate2d.preparation import (
    check_input,
    load_case,
    normalize_intensity,
    resize_slices,
    split_cases,
)

HARMOFL_PROSTATE_SITES = ("BIDMC", "HK", "I2CVB", "ISBI", "ISBI_1.5", "UCL")
SPLIT_FRACTIONS = (0.64, 0.16, 0.2)  # the released code: train 0.8 * 0.8, val 0.8 * 0.2, test 0.2
CLIP_PERCENTILE = 99.0  # upper intensity clip; the lower bound is the volume minimum
MAX_INTENSITY = 255  # the released code stores uint8 images and feeds them unscaled (0..255)
DEFAULT_SIZE = 384  # in-plane size of the released UNet's input
DATASET_DIR = "dataset_harmofl_prostate"
DATALIST_DIR = "datalist_harmofl_prostate"


def client_name(site: str) -> str:
    """NVFlare client name of a site: ``client_<site>`` with ``.`` -> ``_`` (``ISBI_1.5`` -> ``client_ISBI_1_5``)."""
    return f"client_{site.replace('.', '_')}"


def to_uint8(volume: np.ndarray, clip_percentile: float = CLIP_PERCENTILE) -> np.ndarray:
    """Clip at ``clip_percentile``, scale [min, clip] to [0, 255] and truncate to uint8 (the released code)."""
    scaled = normalize_intensity(volume, lower=0.0, upper=clip_percentile)
    return np.floor(scaled * MAX_INTENSITY).astype(np.uint8)


def center_slices(mask: np.ndarray) -> List[int]:
    """Slices ``i`` in ``1 .. D-2`` of an ``(H, W, D)`` mask that contain foreground (2.5-D centres)."""
    return [z for z in range(1, mask.shape[2] - 1) if mask[:, :, z].any()]


def split_slices(items: Sequence[Dict], fractions: Sequence[float], seed: int) -> Dict[str, List[Dict]]:
    """The released split: a seeded permutation cut at ``int(f0 n)`` and ``int((f0 + f1) n)``."""
    order = np.random.default_rng(seed).permutation(len(items))
    n = len(items)
    train_end, val_end = int(fractions[0] * n), int((fractions[0] + fractions[1]) * n)
    shuffled = [items[i] for i in order]
    return {"training": shuffled[:train_end], "validation": shuffled[train_end:val_end], "testing": shuffled[val_end:]}


def write_volume(array: np.ndarray, path: Path) -> None:
    """Write one volume (into a staged site folder, so a plain write)."""
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.eye(4)), str(path))


def prepare_site(cases: Sequence[Tuple[str, Path, Path]], site: str, site_folder: Path, size: int,
                 clip_percentile: float) -> Dict[str, List[Dict]]:
    """Write one site's normalised volumes into ``site_folder``; return ``{case: [datalist items, one per 2.5-D
    slice]}``."""
    items: Dict[str, List[Dict]] = {}
    for case, image_path, mask_path in cases:
        image, mask = load_case(image_path, mask_path, site)
        if size and image.shape[:2] != (size, size):
            image, mask = resize_slices(image, size, "bilinear"), resize_slices(mask, size, "nearest")
        rel = Path(site) / case
        (site_folder / case).mkdir()
        write_volume(to_uint8(image, clip_percentile), site_folder / case / "image.nii.gz")
        write_volume(mask > 0, site_folder / case / "label.nii.gz")
        items[case] = [{"image": str(rel / "image.nii.gz"), "label": str(rel / "label.nii.gz"), "slice": z}
                       for z in center_slices(mask)]
        print(f"  {site}/{case}: {len(items[case])} slices", flush=True)
    return items


def prepare(input_dir: Path, output_dir: Path, sites: Sequence[str] = HARMOFL_PROSTATE_SITES,
            size: int = DEFAULT_SIZE, split_level: str = "slice", fractions: Sequence[float] = SPLIT_FRACTIONS,
            seed: int = 0, clip_percentile: float = CLIP_PERCENTILE) -> Dict[str, Dict[str, int]]:
    """Check the whole input, prepare every site, write one datalist per client; return ``{client: {split: slice
    count}}``."""
    if split_level not in ("slice", "patient"):
        raise ValueError(f"split_level must be 'slice' or 'patient', got {split_level!r}")
    if abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {list(fractions)}")
    cases_of_site = check_input(input_dir, "saml", sites)
    summary = {}
    with StagedOutput() as staged:
        for site, cases in cases_of_site.items():
            print(f"preparing {site}: {len(cases)} cases", flush=True)
            items = prepare_site(cases, site, staged.folder(output_dir / DATASET_DIR / site), size, clip_percentile)
            if split_level == "slice":
                datalist = split_slices([item for case in sorted(items) for item in items[case]], fractions, seed)
            else:
                splits = split_cases(list(items), fractions, seed)
                datalist = {split: [item for case in names for item in items[case]] for split, names in splits.items()}
            client = client_name(site)
            staged.write_json(datalist, output_dir / DATALIST_DIR / f"{client}.json")
            summary[client] = {split: len(entries) for split, entries in datalist.items()}
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", type=Path, required=True, help="SAML folder holding one sub-folder per site")
    parser.add_argument("--output_dir", type=Path, default=Path("data_preparation"))
    parser.add_argument("--sites", nargs="+", default=HARMOFL_PROSTATE_SITES)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="in-plane size; 0 keeps each volume's size")
    parser.add_argument("--split_level", choices=("slice", "patient"), default="slice",
                        help="slice: the original's split of shuffled slices; patient: whole cases per split")
    parser.add_argument("--split", type=float, nargs=3, default=SPLIT_FRACTIONS, metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip_percentile", type=float, default=CLIP_PERCENTILE)
    args = parser.parse_args(argv)
    try:
        summary = prepare(args.input_dir, args.output_dir, args.sites, args.size, args.split_level, args.split,
                          args.seed, args.clip_percentile)
    except (DataError, OSError) as e:  # bad input, or a full disk: one line, the previous output kept
        sys.exit(f"error: {e}")
    for client, counts in summary.items():
        print(f"{client}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " slices")
    print(f"datalists written to {args.output_dir / DATALIST_DIR}")


if __name__ == "__main__":
    main()
