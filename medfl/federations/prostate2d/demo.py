"""Generate the built-in demo federation: SYNTHETIC T2-like prostate MRI volumes with gland masks.

Not real patient data. Each site gets its own acquisition style (matrix size and voxel spacing, intensity
scale and gamma, bias field, noise, gland/background contrast), so that the sites differ the way real
scanners do. Output uses the SAML / PROMISE12 naming (``<site>/CaseNN.nii.gz`` and
``<site>/CaseNN_segmentation.nii.gz``) and then goes through the same preparation as real data::

    python data_preparation/make_demo_prostate.py --output_dir data_preparation/raw/demo_prostate
    python data_preparation/prepare_prostate_2d.py --source saml \
        --input_dir data_preparation/raw/demo_prostate --output_dir data_preparation

By default the three sites of the FedSM / FedAvg jobs are written (:data:`SITE_STYLES`); ``--sites`` picks
others (:data:`ALL_SITE_STYLES`), e.g. HarmoFL's six SAML sites::

    python data_preparation/make_demo_prostate.py --output_dir data_preparation/raw/demo_harmofl_prostate \
        --sites BIDMC HK I2CVB ISBI ISBI_1.5 UCL
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

import nibabel as nib
import numpy as np

from medfl.common.staging import StagedOutput


@dataclass(frozen=True)
class AcquisitionStyle:
    """How one site's scanner renders the same anatomy."""

    matrix: int  # in-plane voxels
    slices: int
    spacing_mm: Tuple[float, float, float]
    scale: float  # intensity of fat-like tissue
    gamma: float
    bias: float  # amplitude of the smooth multiplicative bias field
    noise: float  # Rician-like noise, fraction of scale
    contrast: float  # gland / surrounding tissue contrast multiplier


# The scales put every site in the range the original's fixed intensity rule expects (value / 2048, clipped at 1),
# as the real PROMISE12 case in ../shared/data (99th percentile about 1260): on the slices with prostate at most
# 2 % of the voxels clip (where the bias field is strongest) and the gland is neither black nor clipped (its median
# level after the rule, in 0..255: I2CVB about 90, MSD 30, NCI_ISBI_3T 140).
SITE_STYLES: Dict[str, AcquisitionStyle] = {
    "I2CVB": AcquisitionStyle(96, 24, (1.0, 1.0, 3.0), 1000.0, 0.8, 0.45, 0.02, 1.0),
    "MSD": AcquisitionStyle(80, 16, (1.2, 1.2, 3.6), 550.0, 1.3, 0.15, 0.06, 0.6),
    "NCI_ISBI_3T": AcquisitionStyle(112, 20, (0.85, 0.85, 3.0), 1300.0, 1.0, 0.30, 0.035, 1.5),
}
# Further sites named as in the SAML multi-site set (HarmoFL): endorectal-coil bias (BIDMC, ISBI_1.5),
# low-SNR 1.5 T (HK), bright high-contrast 3 T (ISBI), a darker gamma (UCL).
EXTRA_SITE_STYLES: Dict[str, AcquisitionStyle] = {
    "BIDMC": AcquisitionStyle(96, 20, (1.0, 1.0, 3.0), 900.0, 0.9, 0.60, 0.03, 1.2),
    "HK": AcquisitionStyle(80, 18, (1.2, 1.2, 3.3), 300.0, 1.1, 0.20, 0.07, 0.8),
    "ISBI": AcquisitionStyle(104, 20, (0.9, 0.9, 3.0), 1800.0, 1.0, 0.30, 0.03, 1.3),
    "ISBI_1.5": AcquisitionStyle(88, 16, (1.1, 1.1, 4.0), 700.0, 1.2, 0.50, 0.05, 1.0),
    "UCL": AcquisitionStyle(96, 22, (1.0, 1.0, 3.0), 1500.0, 0.7, 0.25, 0.04, 1.1),
}
# Each site's random stream is seeded by its position here, so adding sites never changes existing ones.
ALL_SITE_STYLES: Dict[str, AcquisitionStyle] = {**SITE_STYLES, **EXTRA_SITE_STYLES}


def _ellipsoid(grid_mm, centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid_mm, centre, radii))


def synthesize_case(style: AcquisitionStyle, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One T2-like volume ``(H, W, D)`` float32 and its gland mask (uint8), in the site's style."""
    n, d = style.matrix, style.slices
    axes = [(np.arange(m) - (m - 1) / 2) * s for m, s in zip((n, n, d), style.spacing_mm)]
    grid = np.meshgrid(*axes, indexing="ij")  # millimetres, centred
    fov = n * style.spacing_mm[0] / 2

    body = _ellipsoid(grid[:2], (0, 0), (fov * 0.92, fov * 0.75)) < 1
    tissue = np.where(body, 0.35, 0.0)
    fat_ring = body & (_ellipsoid(grid[:2], (0, 0), (fov * 0.78, fov * 0.6)) > 1)
    tissue[fat_ring] = 1.0
    # gland: ellipsoid with random size and lobulation; central zone darker, peripheral zone brighter
    centre = rng.normal(0, 2.0, 3) + np.array([0, -4.0, 0])
    radii = rng.uniform([14, 11, 10], [22, 16, 18])
    angle = np.arctan2(grid[1] - centre[1], grid[0] - centre[0])
    lobes = 1 + 0.12 * np.sin(2 * angle + rng.uniform(0, np.pi)) + 0.06 * np.sin(3 * angle)
    r = _ellipsoid(grid, centre, radii) / lobes
    gland = r < 1
    tissue[gland] = np.where(r[gland] > 0.55, 0.75, 0.45)
    # bladder above (bright, fluid) and rectum below (dark)
    bladder = _ellipsoid(grid, centre + [0, radii[1] + 9, 0], (18, 9, 14)) < 1
    tissue[bladder & ~gland] = 1.3
    rectum = _ellipsoid(grid[:2], (centre[0], centre[1] - radii[1] - 7), (8, 5)) < 1
    tissue[rectum & ~gland] = 0.15

    # the site's acquisition: contrast around the gland, gamma, bias field, scale, noise
    tissue = np.where(gland, 0.35 + (tissue - 0.35) * style.contrast, tissue).clip(0)
    image = tissue ** style.gamma
    coeffs = rng.normal(0, style.bias, 4)
    u = [g / fov for g in grid]
    bias = np.exp(coeffs[0] * u[0] + coeffs[1] * u[1] + coeffs[2] * u[0] * u[1] + coeffs[3] * u[2] / 3)
    image = image * bias * style.scale
    texture = rng.normal(0, 0.04, image.shape) * image
    noise = style.noise * style.scale
    image = np.hypot(image + texture + rng.normal(0, noise, image.shape), rng.normal(0, noise, image.shape))
    return image.astype(np.float32), gland.astype(np.uint8)


def write_nifti(array: np.ndarray, spacing: Tuple[float, ...], path: Path) -> None:
    """Write a NIfTI file with a diagonal affine of the given spacing (into a staged site folder)."""
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def make_demo_federation(output_dir: Path, cases_per_site: int = 8, seed: int = 0,
                         sites: Sequence[str] = tuple(SITE_STYLES)) -> Dict[str, int]:
    """Write ``cases_per_site`` synthetic cases for each of ``sites`` (keys of :data:`ALL_SITE_STYLES`); each
    site's folder is built aside and swapped in when all are written."""
    unknown = sorted(set(sites) - set(ALL_SITE_STYLES))
    if unknown:
        raise ValueError(f"unknown demo site(s) {unknown}; known: {list(ALL_SITE_STYLES)}")
    counts = {}
    with StagedOutput() as staged:
        for site in sites:
            style, site_index = ALL_SITE_STYLES[site], list(ALL_SITE_STYLES).index(site)
            rng = np.random.default_rng([seed, site_index])
            folder = staged.folder(output_dir / site)
            for case in range(cases_per_site):
                image, mask = synthesize_case(style, rng)
                write_nifti(image, style.spacing_mm, folder / f"Case{case:02d}.nii.gz")
                write_nifti(mask, style.spacing_mm, folder / f"Case{case:02d}_segmentation.nii.gz")
            counts[site] = cases_per_site
            print(f"{site}: {cases_per_site} synthetic cases ({style.matrix}x{style.matrix}x{style.slices})",
                  flush=True)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("data_preparation/raw/demo_prostate"))
    parser.add_argument("--cases_per_site", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sites", nargs="+", default=list(SITE_STYLES), choices=list(ALL_SITE_STYLES),
                        help="sites to generate (default: the FedSM demo's three)")
    args = parser.parse_args(argv)
    make_demo_federation(args.output_dir, args.cases_per_site, args.seed, args.sites)
    print(f"synthetic demo federation written to {args.output_dir}")


if __name__ == "__main__":
    main()
