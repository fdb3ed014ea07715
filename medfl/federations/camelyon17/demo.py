"""Generate the built-in Camelyon17 demo federation: SYNTHETIC H&E-like 96x96 patches from 5 hospitals.

Not real tissue. Each patch is tissue drawn in stain concentrations (haematoxylin in nuclei, eosin in stroma with
gaps) and rendered through the Beer-Lambert law with the hospital's own stain colours, staining strength,
illumination, focus blur and sensor noise, so hospitals differ in colour and in their amplitude spectra the way
scanners and staining protocols do. Two classes with a learnable difference: tumour patches have denser,
larger, darker and more irregular nuclei than normal ones. Deterministic from ``--seed``.

Output in the WILDS ``camelyon17_v1.0`` layout (``metadata.csv`` + ``patches/patient_PPP_node_N/*.png``),
which then goes through the same preparation as the real data::

    python data_preparation/make_demo_camelyon17.py --output_dir data_preparation/raw/demo_camelyon17
    python data_preparation/prepare_camelyon17.py --data_root data_preparation/raw/demo_camelyon17 \
        --output_dir data_preparation
"""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from medfl.common.staging import StagedOutput
from medfl.federations.camelyon17.data import METADATA, NUM_HOSPITALS, PATCH_SIZE, hospital_name, patch_path

Vector3 = Tuple[float, float, float]
METADATA_COLUMNS = ("", "patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split")
NODES_PER_PATIENT = 5  # Camelyon17 scans five lymph nodes per patient
PATCH_ORIGIN = 1024  # slide coordinate of the first synthetic patch, in pixels
PATCHES = "patches"  # the WILDS folder of all patches (the first part of every patch_path)


@dataclass(frozen=True)
class StainStyle:
    """How one hospital's staining and scanner render the same tissue (Beer-Lambert: ``I = I0 * 10^-OD``)."""

    haematoxylin: Vector3  # optical density per unit concentration in R, G, B (nuclei: blue-purple)
    eosin: Vector3  # same for eosin (stroma and cytoplasm: pink)
    strength: float  # multiplies both concentrations (staining time, section thickness)
    illumination: Vector3  # white point I0 in R, G, B, in [0, 1]
    blur_sigma: float  # focus blur, pixels
    noise_std: float  # sensor noise, fraction of full scale


@dataclass(frozen=True)
class NucleusProfile:
    """Nuclei of one tissue class: ranges drawn uniformly per patch (count) or per nucleus."""

    count: Tuple[int, int]
    radius: Tuple[float, float]  # mean semi-axis, pixels
    elongation: Tuple[float, float]  # ratio of the semi-axes
    density: Tuple[float, float]  # haematoxylin concentration


HOSPITAL_STYLES: Dict[str, StainStyle] = {
    hospital_name(0): StainStyle((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), 1.0, (0.95, 0.93, 0.96), 0.6, 0.010),
    hospital_name(1): StainStyle((0.50, 0.80, 0.33), (0.10, 0.90, 0.20), 1.4, (0.92, 0.90, 0.94), 0.4, 0.015),
    hospital_name(2): StainStyle((0.75, 0.62, 0.25), (0.05, 0.80, 0.05), 0.7, (0.98, 0.96, 0.90), 1.2, 0.008),
    hospital_name(3): StainStyle((0.60, 0.75, 0.35), (0.15, 1.05, 0.25), 0.95, (0.99, 0.90, 0.92), 0.8, 0.020),
    hospital_name(4): StainStyle((0.70, 0.68, 0.22), (0.08, 0.95, 0.10), 0.9, (0.86, 0.91, 0.97), 0.3, 0.025),
}
TISSUE: Dict[int, NucleusProfile] = {
    0: NucleusProfile(count=(10, 16), radius=(2.5, 3.5), elongation=(1.0, 1.2), density=(0.5, 0.7)),  # normal
    1: NucleusProfile(count=(22, 32), radius=(4.0, 6.5), elongation=(1.1, 1.7), density=(0.8, 1.1)),  # tumour
}
EDGE_SHARPNESS = 6.0  # logistic slope of a nucleus border, per unit of normalised radius
CHROMATIN_TEXTURE = 0.25  # relative fluctuation of haematoxylin inside nuclei
STROMA_BASE, STROMA_VARIATION = 0.35, 0.12  # eosin concentration of stroma: mean and fluctuation
STROMA_SCALE = 6.0  # correlation length of the stroma field, pixels
GAP_LEVEL = -1.2  # stroma field below this (in standard deviations) is an empty gap (fat, lumen)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / field.std()


def synthesize_tissue(label: int, rng: np.random.Generator, size: int = PATCH_SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration maps ``(size, size)`` of one patch of class ``label``."""
    profile = TISSUE[label]
    count = rng.integers(profile.count[0], profile.count[1], endpoint=True)
    centres = rng.uniform(0, size, (count, 2, 1, 1))
    radius = rng.uniform(*profile.radius, (count, 1, 1))
    elongation = np.sqrt(rng.uniform(*profile.elongation, (count, 1, 1)))
    angle = rng.uniform(0, np.pi, (count, 1, 1))
    density = rng.uniform(*profile.density, (count, 1, 1))
    grid_y, grid_x = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = grid_y - centres[:, 0], grid_x - centres[:, 1]  # (count, size, size)
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / (radius * elongation)
    v = (dy * np.cos(angle) - dx * np.sin(angle)) / (radius / elongation)
    inside = 1 / (1 + np.exp(-EDGE_SHARPNESS * (1 - np.hypot(u, v))))
    haematoxylin = (density * inside).max(axis=0) * (1 + CHROMATIN_TEXTURE * _smooth_noise(rng, size, 1.0))
    stroma = _smooth_noise(rng, size, STROMA_SCALE)
    eosin = np.where(stroma > GAP_LEVEL, STROMA_BASE + STROMA_VARIATION * stroma, 0.0) * (1 - inside.max(axis=0))
    return haematoxylin.clip(0), eosin.clip(0)


def render(haematoxylin: np.ndarray, eosin: np.ndarray, style: StainStyle, rng: np.random.Generator) -> np.ndarray:
    """Stain concentrations -> 8-bit RGB ``(H, W, 3)`` in the hospital's style."""
    density = style.strength * (haematoxylin[..., None] * style.haematoxylin + eosin[..., None] * style.eosin)
    rgb = np.asarray(style.illumination) * 10.0 ** (-density)
    rgb = gaussian_filter(rgb, (style.blur_sigma, style.blur_sigma, 0))
    rgb = rgb + rng.normal(0, style.noise_std, rgb.shape)
    return np.round(rgb.clip(0, 1) * 255).astype(np.uint8)


def write_png(array: np.ndarray, path: Path) -> None:
    """Write an image into the staged ``patches/`` folder (PNG is chosen from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_demo_camelyon17(output_dir: Path, slides_per_hospital: int = 4, patches_per_slide: int = 10,
                         seed: int = 0) -> Dict[str, int]:
    """Write the demo federation; return ``{site: patch count}``.

    Each slide is its own patient (``patient = center * slides_per_hospital + slide``) and holds alternating
    normal / tumour patches, so every slide and hospital is class-balanced. ``patches/`` is built aside and swapped
    in, ``metadata.csv`` last.
    """
    rows, counts = [], {}
    with StagedOutput() as staged:
        patches = staged.folder(output_dir / PATCHES)
        for center in range(NUM_HOSPITALS):
            site = hospital_name(center)
            style = HOSPITAL_STYLES[site]
            for slide in range(slides_per_hospital):
                patient, node = center * slides_per_hospital + slide, slide % NODES_PER_PATIENT
                for k in range(patches_per_slide):
                    label = k % 2
                    x, y = PATCH_ORIGIN + PATCH_SIZE * k, PATCH_ORIGIN
                    rng = np.random.default_rng([seed, center, slide, k])
                    patch = render(*synthesize_tissue(label, rng), style, rng)
                    write_png(patch, patches / Path(patch_path(patient, node, x, y)).relative_to(PATCHES))
                    rows.append((len(rows), patient, node, x, y, label, center * slides_per_hospital + slide, center,
                                 0))
            counts[site] = slides_per_hospital * patches_per_slide
            print(f"{site}: {counts[site]} synthetic patches from {slides_per_hospital} slides", flush=True)
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([METADATA_COLUMNS, *rows])
        staged.file(output_dir / METADATA).write_text(text.getvalue())
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("data_preparation/raw/demo_camelyon17"))
    parser.add_argument("--slides_per_hospital", type=int, default=4)
    parser.add_argument("--patches_per_slide", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_demo_camelyon17(args.output_dir, args.slides_per_hospital, args.patches_per_slide, args.seed)
    print(f"synthetic Camelyon17 demo federation written to {args.output_dir}")


if __name__ == "__main__":
    main()
