"""Generate the built-in nuclei demo federation from ONE real fluorescence image, tiled into sites.

The source is the 512x512 16-bit DSB2018 (BBBC038) image with its expert instance mask in
``shared/data/nuclei_dsb2018`` (``img2d.tif``, ``mask2d.tif``; read with Pillow's ``I;16`` mode, tifffile is
not needed). It is cut into non-overlapping tiles, the tiles are dealt to the sites in a seeded order, and each
site renders its tiles with its own acquisition style: gain and gamma, background offset, focus blur, sensor
noise and a colour tint to RGB (one site is brightfield-like: dark nuclei on a bright background). The sites
therefore differ in colour and amplitude spectrum while sharing real nuclei and real masks. Deterministic from
``--seed``. Output in the documented layout (``<site>/images/<stem>.png``, ``<site>/masks/<stem>.png`` with
16-bit instance ids)::

    python data_preparation/make_demo_nuclei.py --source_dir ../shared/data/nuclei_dsb2018 \
        --output_dir data_preparation/raw/demo_nuclei
    python data_preparation/prepare_nuclei.py --data_root data_preparation/raw/demo_nuclei --output_dir data_preparation
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from medfl.common.errors import DataError
from medfl.common.images import read_image
from medfl.common.staging import StagedOutput
from medfl.federations.nuclei.data import IMAGES, MASKS

Vector3 = Tuple[float, float, float]
SOURCE_IMAGE, SOURCE_MASK = "img2d.tif", "mask2d.tif"
DEFAULT_SOURCE = Path(__file__).resolve().parents[4] / "shared" / "data" / "nuclei_dsb2018"  # ../shared beside the checkout
SIGNAL_PERCENTILE = 99.5  # source intensity mapped to signal 1 (a few saturated nuclei lie above it)
PIXEL_MAX = 255


@dataclass(frozen=True)
class AcquisitionStyle:
    """How one site's microscope turns the nuclear signal ``s`` in [0, 1] into 8-bit RGB.

    ``s' = clip(gain * blur(s), 0, 1) ** gamma``; fluorescence: ``rgb = offset + s' * tint``; brightfield:
    ``rgb = (1 - offset) - s' * (1 - offset - tint)`` (white background, nuclei of colour ``tint``); then
    Gaussian noise of ``noise_std``.
    """

    tint: Vector3
    gain: float
    gamma: float
    offset: float
    blur_sigma: float  # pixels
    noise_std: float  # fraction of full scale
    brightfield: bool = False


SITE_STYLES: Dict[str, AcquisitionStyle] = {
    "dapi_blue": AcquisitionStyle((0.25, 0.45, 1.00), gain=1.3, gamma=1.0, offset=0.03, blur_sigma=0.0, noise_std=0.01),
    "widefield_grey": AcquisitionStyle((0.85, 0.85, 0.85), gain=0.6, gamma=0.7, offset=0.12, blur_sigma=1.2,
                                       noise_std=0.03),
    "confocal_green": AcquisitionStyle((0.30, 1.00, 0.35), gain=1.6, gamma=1.4, offset=0.00, blur_sigma=0.5,
                                       noise_std=0.05),
    "brightfield_purple": AcquisitionStyle((0.40, 0.20, 0.55), gain=1.2, gamma=0.8, offset=0.06, blur_sigma=0.8,
                                           noise_std=0.02, brightfield=True),
}


def load_source(source_dir: Path) -> Tuple[np.ndarray, np.ndarray]:
    """The source image as signal in [0, 1] (``/ percentile``, clipped) and its instance mask (uint16)."""
    image = read_image(source_dir / SOURCE_IMAGE).astype(np.float64)
    mask = read_image(source_dir / SOURCE_MASK)
    if image.ndim != 2 or image.shape != mask.shape:
        raise DataError(f"expected a 2D image and a mask of the same size, got {image.shape} and {mask.shape}",
                        path=source_dir / SOURCE_IMAGE)
    return np.clip(image / np.percentile(image, SIGNAL_PERCENTILE), 0, 1), mask.astype(np.uint16)


def render(signal: np.ndarray, style: AcquisitionStyle, rng: np.random.Generator) -> np.ndarray:
    """Signal ``(H, W)`` in [0, 1] -> 8-bit RGB ``(H, W, 3)`` in the site's style."""
    blurred = gaussian_filter(signal, style.blur_sigma) if style.blur_sigma else signal
    s = np.clip(style.gain * blurred, 0, 1)[..., None] ** style.gamma
    tint = np.asarray(style.tint)
    if style.brightfield:
        rgb = (1 - style.offset) - s * (1 - style.offset - tint)
    else:
        rgb = style.offset + s * tint
    rgb = rgb + rng.normal(0, style.noise_std, rgb.shape)
    return np.round(rgb.clip(0, 1) * PIXEL_MAX).astype(np.uint8)


def write_png(array: np.ndarray, path: Path) -> None:
    """Write an image into a staged site folder (uint16 arrays become 16-bit grey PNGs)."""
    Image.fromarray(array).save(path)


def make_demo_nuclei(source_dir: Path, output_dir: Path, tile_size: int = 64, seed: int = 0) -> Dict[str, int]:
    """Tile the source, deal the tiles to the sites of :data:`SITE_STYLES` round-robin in a seeded order and
    write them in the site's style; return ``{site: tile count}``. Tile stems are ``r<row>_c<col>``. Each site's
    folder is built aside and swapped in when all are written."""
    signal, mask = load_source(source_dir)
    rows, cols = signal.shape[0] // tile_size, signal.shape[1] // tile_size
    if rows * cols < len(SITE_STYLES):
        raise ValueError(f"tile_size {tile_size} gives {rows * cols} tiles, fewer than {len(SITE_STYLES)} sites")
    order = np.random.default_rng(seed).permutation(rows * cols)
    sites = list(SITE_STYLES)
    counts = dict.fromkeys(sites, 0)
    with StagedOutput() as staged:
        folders = {site: staged.folder(output_dir / site) for site in sites}
        for folder in folders.values():
            (folder / IMAGES).mkdir()
            (folder / MASKS).mkdir()
        for rank, tile in enumerate(order):
            site = sites[rank % len(sites)]
            row, col = divmod(int(tile), cols)
            window = np.s_[row * tile_size : (row + 1) * tile_size, col * tile_size : (col + 1) * tile_size]
            rng = np.random.default_rng([seed, int(tile)])
            stem = f"r{row:02d}_c{col:02d}"
            write_png(render(signal[window], SITE_STYLES[site], rng), folders[site] / IMAGES / f"{stem}.png")
            write_png(mask[window], folders[site] / MASKS / f"{stem}.png")
            counts[site] += 1
    for site, count in counts.items():
        print(f"{site}: {count} tiles of {tile_size}x{tile_size}", flush=True)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_dir", type=Path, default=DEFAULT_SOURCE, help="folder with img2d.tif, mask2d.tif")
    parser.add_argument("--output_dir", type=Path, default=Path("data_preparation/raw/demo_nuclei"))
    parser.add_argument("--tile_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        make_demo_nuclei(args.source_dir, args.output_dir, args.tile_size, args.seed)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"nuclei demo federation written to {args.output_dir}")


if __name__ == "__main__":
    main()
