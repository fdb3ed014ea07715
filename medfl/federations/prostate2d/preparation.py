"""Prepare 3D prostate T2 MRI volumes as 2D axial slices and per-client datalists (FedSM / prostate layout).

By default this is the original's preparation (NVFlare ``research/prostate/data_preparation``,
``utils/preprocess_3d_to_2d.py`` and ``utils/prepare_data_split.py``; ALGORITHMS.md §6.1):

* intensity (``--intensity fixed``): every voxel divided by ``--max_intensity`` 2048, values above 1 set to 1, then
  x255 and truncated to 8 bits (the original's PIL ``"L"`` conversion). ``--intensity percentile`` instead clips
  each volume to its ``--percentiles`` (1st-99th) and scales that range to 0..255;
* only slices whose mask holds prostate are kept (``--all_slices`` keeps every slice);
* slices keep the volume's in-plane size (the clients resize them: ``image_size`` of the prostate client);
  ``--size N`` resizes them here instead (bilinear image, nearest mask);
* the split is by case, per site: the sorted case ids, shuffled by ``numpy.random.seed(seed); shuffle(arange(n))``
  (numpy's legacy generator, seed 0 as the original); training = the first ``round(n * 0.5)`` cases, validation the
  next ``round(n * 0.25)``, testing the rest (:func:`split_cases`; 39 cases give 20 / 10 / 9).

Stored format: 8-bit values as the original's PNG files, kept in uint8 NIfTI files (image 0..255, mask 0/1), so
the loaders, their checks and the other jobs on these slices stay as they are. The original also transposes and
flips each slice for viewing; the slices here keep the volume's array orientation (the same for every site). Output::

    <output_dir>/dataset_2D/<site>/<case>/image_<z>.nii.gz, label_<z>.nii.gz
    <output_dir>/datalist_2D/client_<site>.json     {"training": [...], "validation": [...], "testing": [...]}
    <output_dir>/datalist_2D/client_All.json        the union of all sites' splits

Every case of every site is paired and its NIfTI headers are read before anything is written; then each site is
built in a temporary folder and swapped in with its datalist (``medfl.common.staging``), so a failure leaves the
previous slices and datalists exactly as they were.

Input layouts (``--source``), one folder per site under ``--input_dir``:

* ``saml``: ``<site>/CaseNN.nii.gz`` + ``<site>/CaseNN_segmentation.nii.gz`` (SAML multi-site prostate set and
  PROMISE12 naming; also the synthetic demo federation);
* ``msd``: Medical Segmentation Decathlon Task05_Prostate, ``imagesTr/prostate_NN.nii.gz`` (4D; T2 is channel
  0) + ``labelsTr/prostate_NN.nii.gz`` (peripheral and transition zones, merged into one gland mask);
* ``image_mask``: ``<site>/Image/<case>.nii.gz`` + ``<site>/Mask/<case>.nii.gz`` (the NVFlare prostate example).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from medfl.common.errors import DataError
from medfl.common.staging import StagedOutput

NIFTI = re.compile(r"^(?P<case>.+?)\.nii(\.gz)?$")
SAML_MASK = re.compile(r"^(?P<case>.+?)_segmentation\.nii(\.gz)?$", re.IGNORECASE)


def _cases_in(folder: Path, site: str) -> Dict[str, Path]:
    if not folder.is_dir():
        raise DataError("folder not found", path=folder, site=site)
    return {m["case"]: p for p in sorted(folder.iterdir()) if (m := NIFTI.match(p.name))}


def find_cases(site_dir: Path, source: str, site: str) -> List[Tuple[str, Path, Path]]:
    """``[(case_id, image_path, mask_path)]`` of one site, paired by case id; an unpaired file is an error."""
    if source == "saml":
        files = _cases_in(site_dir, site)
        masks = {SAML_MASK.match(p.name)["case"]: p for p in files.values() if SAML_MASK.match(p.name)}
        images = {c: p for c, p in files.items() if not SAML_MASK.match(p.name)}
    elif source == "msd":
        images, masks = _cases_in(site_dir / "imagesTr", site), _cases_in(site_dir / "labelsTr", site)
        images = {c: p for c, p in images.items() if not c.startswith("._")}
    elif source == "image_mask":
        images, masks = _cases_in(site_dir / "Image", site), _cases_in(site_dir / "Mask", site)
    else:
        raise ValueError(f"unknown source {source!r}")
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        case = unpaired[0]
        path = images.get(case) or masks.get(case)
        kind = "mask" if case in images else "image"
        raise DataError(f"no {kind} for case '{case}' ({len(unpaired)} unpaired case(s) in total)", path=path, site=site)
    if not images:
        raise DataError(f"no NIfTI volumes found for layout '{source}'", path=site_dir, site=site)
    return [(c, images[c], masks[c]) for c in sorted(images)]


def load_case(image_path: Path, mask_path: Path, site: str) -> Tuple[np.ndarray, np.ndarray]:
    """The T2 volume ``(H, W, D)`` and its binary gland mask; MSD's 4D images give their first channel."""
    arrays = []
    for path in (image_path, mask_path):
        try:
            arrays.append(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32))
        except Exception as e:
            raise DataError(f"cannot read NIfTI file ({type(e).__name__}: {e})", path=path, site=site) from None
    image, mask = arrays
    if image.ndim == 4:
        image = image[..., 0]
    if image.shape != mask.shape:
        raise DataError(f"image shape {image.shape} does not match mask shape {mask.shape} ({mask_path})",
                        path=image_path, site=site)
    return image, (mask > 0).astype(np.float32)


def check_case(image_path: Path, mask_path: Path, site: str) -> None:
    """Read the headers of one pair: both must be NIfTI, the image 3D (or 4D, MSD) with the mask's shape."""
    shapes = []
    for path in (image_path, mask_path):
        try:
            shapes.append(nib.load(str(path)).shape)
        except Exception as e:
            raise DataError(f"cannot read NIfTI header ({type(e).__name__}: {e})", path=path, site=site) from None
    image, mask = shapes
    if len(image) not in (3, 4) or image[:3] != mask:
        raise DataError(f"image shape {image} does not match mask shape {mask} ({mask_path})",
                        path=image_path, site=site)


def check_input(input_dir: Path, source: str, sites: Sequence[str]) -> Dict[str, List[Tuple[str, Path, Path]]]:
    """``{site: [(case_id, image_path, mask_path)]}`` for every site, paired and header-checked (:func:`check_case`)
    before anything is written."""
    if not input_dir.is_dir():
        raise DataError("input folder not found", path=input_dir)
    site_dirs = site_folders(input_dir, source, sites)
    if not site_dirs:
        raise DataError("no site folders", path=input_dir)
    cases = {site: find_cases(site_dir, source, site) for site, site_dir in site_dirs.items()}
    for site, site_cases in cases.items():
        for _, image_path, mask_path in site_cases:
            check_case(image_path, mask_path, site)
    return cases


MAX_INTENSITY = 2048.0  # the original's divisor (preprocess_3d_to_2d.py): image / 2048, values above 1 set to 1
LEVELS = 255  # 8-bit slices, as the original's PNG files
INTENSITY_RULES = ("fixed", "percentile")
SPLIT_FRACTIONS = (0.5, 0.25, 0.25)  # prepare_data_split.py's defaults


def normalize_intensity(volume: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """Clip to the ``lower``/``upper`` percentiles and scale to [0, 1]."""
    lo, hi = np.percentile(volume, [lower, upper])
    return ((np.clip(volume, lo, hi) - lo) / max(hi - lo, 1e-8)).astype(np.float32)


def fixed_intensity(volume: np.ndarray, max_intensity: float = MAX_INTENSITY) -> np.ndarray:
    """The original's rule: ``volume / max_intensity``, values above 1 set to 1 (and below 0 to 0, as its 8-bit
    conversion does)."""
    return np.clip(volume / max_intensity, 0.0, 1.0).astype(np.float32)


def to_8bit(unit: np.ndarray) -> np.ndarray:
    """[0, 1] -> 0..255 uint8, truncated as the original's PIL ``Image.fromarray(x * 255).convert("L")``."""
    return np.floor(np.clip(unit, 0.0, 1.0) * LEVELS).astype(np.uint8)


def resize_slices(volume: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize every axial slice of ``(H, W, D)`` to ``(size, size)`` (``bilinear`` images, ``nearest`` masks)."""
    t = torch.from_numpy(np.ascontiguousarray(volume.transpose(2, 0, 1)))[:, None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=(size, size), mode=mode, **kwargs)[:, 0].numpy().transpose(1, 2, 0)


def split_cases(cases: Sequence[str], fractions: Sequence[float] = SPLIT_FRACTIONS, seed: int = 0) -> Dict[str, List[str]]:
    """The original's case-level split (``prepare_data_split.py --mode folder``): the sorted ``cases`` in the order of
    ``numpy.random.seed(seed); numpy.random.shuffle(numpy.arange(n))``; training = the first
    ``round(n * fractions[0])``, validation = the next ``round(n * fractions[1])``, testing = the rest.

    Python's ``round`` (half to even) as the original: 39 cases give 20 / 10 / 9. Small sites may get an empty
    validation or testing split (3 cases: 2 / 1 / 0), as in the original.
    """
    ordered = sorted(cases)
    order = np.arange(len(ordered))
    np.random.RandomState(seed).shuffle(order)  # the legacy generator np.random.seed(seed) sets up
    n = len(ordered)
    train_end = round(n * fractions[0])
    val_end = train_end + round(n * fractions[1])
    shuffled = [ordered[i] for i in order]
    return {"training": shuffled[:train_end], "validation": shuffled[train_end:val_end], "testing": shuffled[val_end:]}


def write_slice(array: np.ndarray, path: Path) -> None:
    """Write one 8-bit slice (into a staged site folder, so a plain write)."""
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.eye(4)), str(path))


def scale_intensity(volume: np.ndarray, rule: str, max_intensity: float, percentiles: Tuple[float, float]) -> np.ndarray:
    """The volume on [0, 1] by ``rule``: ``fixed`` (:func:`fixed_intensity`) or ``percentile``
    (:func:`normalize_intensity`)."""
    if rule == "fixed":
        return fixed_intensity(volume, max_intensity)
    if rule == "percentile":
        return normalize_intensity(volume, *percentiles)
    raise ValueError(f"intensity rule must be one of {INTENSITY_RULES}, got {rule!r}")


def prepare_site(cases: Sequence[Tuple[str, Path, Path]], site: str, site_folder: Path, size: int, all_slices: bool,
                 intensity: str = "fixed", max_intensity: float = MAX_INTENSITY,
                 percentiles: Tuple[float, float] = (1.0, 99.0)) -> Dict[str, List[Dict[str, str]]]:
    """Slice every case of one site into ``site_folder``; return ``{case_id: [datalist items]}``."""
    items: Dict[str, List[Dict[str, str]]] = {}
    for case, image_path, mask_path in cases:
        image, mask = load_case(image_path, mask_path, site)
        image = scale_intensity(image, intensity, max_intensity, percentiles)
        if size:
            image, mask = resize_slices(image, size, "bilinear"), resize_slices(mask, size, "nearest")
        image = to_8bit(image)
        keep = [z for z in range(image.shape[2]) if all_slices or mask[:, :, z].any()]
        items[case] = []
        (site_folder / case).mkdir()
        for z in keep:
            rel = Path(site) / case
            write_slice(image[:, :, z], site_folder / case / f"image_{z:03d}.nii.gz")
            write_slice(mask[:, :, z], site_folder / case / f"label_{z:03d}.nii.gz")
            items[case].append({"image": str(rel / f"image_{z:03d}.nii.gz"), "label": str(rel / f"label_{z:03d}.nii.gz")})
        print(f"  {site}/{case}: {len(keep)} slices", flush=True)
    return items


def prepare(input_dir: Path, output_dir: Path, source: str, sites: Sequence[str] = (), size: int = 0,
            all_slices: bool = False, fractions: Sequence[float] = SPLIT_FRACTIONS, seed: int = 0,
            intensity: str = "fixed", max_intensity: float = MAX_INTENSITY,
            percentiles: Tuple[float, float] = (1.0, 99.0)) -> Dict[str, Dict[str, int]]:
    """Check the whole input, prepare every site, write datalists; return ``{site: {split: slice count}}``."""
    if abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {list(fractions)}")
    if intensity not in INTENSITY_RULES:
        raise ValueError(f"intensity rule must be one of {INTENSITY_RULES}, got {intensity!r}")
    if max_intensity <= 0:
        raise ValueError(f"max_intensity must be positive, got {max_intensity}")
    cases_of_site = check_input(input_dir, source, sites)
    datalist_dir = output_dir / "datalist_2D"
    summary, datalists = {}, {}
    with StagedOutput() as staged:
        for site, site_cases in cases_of_site.items():
            print(f"preparing {site}: {len(site_cases)} cases", flush=True)
            site_folder = staged.folder(output_dir / "dataset_2D" / site)
            items = prepare_site(site_cases, site, site_folder, size, all_slices, intensity, max_intensity, percentiles)
            splits = split_cases(list(items), fractions, seed)
            datalist = {split: [item for case in cases for item in items[case]] for split, cases in splits.items()}
            datalists[f"client_{site}.json"] = datalist
            staged.write_json(datalist, datalist_dir / f"client_{site}.json")
            summary[site] = {split: len(entries) for split, entries in datalist.items()}
        staged.write_json(union_datalist(datalist_dir, datalists), datalist_dir / "client_All.json")
    return summary


def site_folders(input_dir: Path, source: str, sites: Sequence[str]) -> Dict[str, Path]:
    """``{site name: folder}``. ``sites`` entries are ``FOLDER`` or ``FOLDER:NAME`` (rename, e.g. SAML's
    ``ISBI:NCI_ISBI_3T``); empty means every sub-folder (for ``msd``: the input folder itself, named MSD)."""
    if not sites:
        if source == "msd":
            return {"MSD": input_dir}
        return {p.name: p for p in sorted(input_dir.iterdir()) if p.is_dir()}
    folders = {}
    for entry in sites:
        folder, _, name = entry.partition(":")
        folders[name or folder] = input_dir if (source == "msd" and folder in (".", "")) else input_dir / folder
    return folders


def union_datalist(datalist_dir: Path, new: Dict[str, Dict[str, List]]) -> Dict[str, List]:
    """``client_All.json``: the union of every ``client_<site>.json``, the ``new`` ones (by file name) about to
    be swapped in and those already in the folder for other sites (sites prepared by several commands, e.g.
    SAML sites and MSD, end up in one pooled datalist)."""
    datalists = {}
    for path in sorted(datalist_dir.glob("client_*.json")):
        if path.stem != "client_All" and path.name not in new:
            try:
                datalists[path.name] = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"cannot read the datalist of an earlier command ({e})", path=path) from None
    datalists.update(new)
    union: Dict[str, List] = {split: [] for split in ("training", "validation", "testing")}
    for name in sorted(datalists):
        for split, items in datalists[name].items():
            union.setdefault(split, []).extend(items)
    return union


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", type=Path, required=True, help="folder holding one sub-folder per site")
    parser.add_argument("--output_dir", type=Path, default=Path("data_preparation"))
    parser.add_argument("--source", choices=("saml", "msd", "image_mask"), default="saml")
    parser.add_argument("--sites", nargs="*", default=(), help="site sub-folders to prepare, as FOLDER or "
                        "FOLDER:NAME to rename (default: all; for --source msd the input folder itself is site MSD)")
    parser.add_argument("--size", type=int, default=0, help="resize slices here to SIZE x SIZE; 0 (default, as "
                        "the original) keeps the volume's in-plane size and the clients resize (image_size)")
    parser.add_argument("--all_slices", action="store_true", help="keep slices without prostate too")
    parser.add_argument("--split", type=float, nargs=3, default=SPLIT_FRACTIONS, metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the case shuffle (numpy's legacy generator)")
    parser.add_argument("--intensity", choices=INTENSITY_RULES, default="fixed", help="fixed (default, the "
                        "original): divide by --max_intensity and clip at 1; percentile: per-volume --percentiles")
    parser.add_argument("--max_intensity", type=float, default=MAX_INTENSITY)
    parser.add_argument("--percentiles", type=float, nargs=2, default=(1.0, 99.0), metavar=("LOW", "HIGH"))
    args = parser.parse_args(argv)
    try:
        summary = prepare(args.input_dir, args.output_dir, args.source, args.sites, args.size, args.all_slices,
                          args.split, args.seed, args.intensity, args.max_intensity, tuple(args.percentiles))
    except (DataError, OSError) as e:  # bad input, or a full disk: one line, the previous output kept
        sys.exit(f"error: {e}")
    for site, counts in summary.items():
        print(f"{site}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " slices")
    print(f"datalists written to {args.output_dir / 'datalist_2D'}")


if __name__ == "__main__":
    main()
