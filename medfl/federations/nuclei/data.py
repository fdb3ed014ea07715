"""Nuclei segmentation over several sites: per-site folder layout, pairing by stem, splits, dataset.

Layout (``<root>`` holds one folder per site; the site's folder name is its client name)::

    <root>/<site>/images/<stem>.png|.tif|.tiff|.jpg|.jpeg   grey, 16-bit grey or RGB(A) (alpha is dropped)
    <root>/<site>/masks/<stem>.png|.tif|.tiff              one channel: instance ids (0 = background) or binary

An image and its mask are paired by file stem (``images/a12.png`` with ``masks/a12.tif``), never by listing
order; hidden files and other suffixes are ignored. Masks are binarised (``> 0``). Datalists (written by
``data_preparation/prepare_nuclei.py``) hold ``{"image": "<site>/images/..", "label": "<site>/masks/.."}`` items
with paths relative to ``<root>``. Every problem raises :class:`DataError` naming the site and the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medfl.common.data import SAMPLE_ID, SPLITS, datalist_path, read_datalist
from medfl.common.errors import DataError
from medfl.common.images import read_image
from medfl.common.splits import seeded_split, site_seed

__all__ = [
    "DEFAULT_FRACTIONS",
    "IMAGE_SUFFIXES",
    "INTENSITY_MODES",
    "MASK_SUFFIXES",
    "NucleiDataset",
    "binarise_mask",
    "find_pairs",
    "image_to_unit",
    "load_pair",
    "nuclei_datasets",
    "split_site",
    "tile_starts",
]

IMAGES, MASKS = "images", "masks"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png", ".tif", ".tiff")  # lossless only
INTENSITY_MODES = ("dtype", "minmax")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)  # training, validation, testing
ALPHA_CHANNELS = {2: 1, 4: 3}  # grey + alpha, RGB + alpha -> channels kept


def _by_stem(folder: Path, suffixes: Sequence[str], site: str) -> Dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"folder not found (expected <site>/{IMAGES} and <site>/{MASKS})", path=folder, site=site)
    files: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in files:
            raise DataError(f"two files with the stem '{path.stem}' ({files[path.stem].name})", path=path, site=site)
        files[path.stem] = path
    return files


def find_pairs(site_dir: Union[str, os.PathLike], site: str) -> List[Tuple[str, Path, Path]]:
    """``[(stem, image_path, mask_path)]`` of one site, sorted by stem; an unpaired file is an error."""
    site_dir = Path(site_dir)
    images = _by_stem(site_dir / IMAGES, IMAGE_SUFFIXES, site)
    masks = _by_stem(site_dir / MASKS, MASK_SUFFIXES, site)
    for stem in sorted(set(images) ^ set(masks)):
        if stem in images:
            raise DataError(f"no mask '{MASKS}/{stem}' with a suffix in {MASK_SUFFIXES}", path=images[stem], site=site)
        raise DataError(f"no image '{IMAGES}/{stem}' with a suffix in {IMAGE_SUFFIXES}", path=masks[stem], site=site)
    if not images:
        raise DataError(f"no images with a suffix in {IMAGE_SUFFIXES}", path=site_dir / IMAGES, site=site)
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def image_to_unit(array: np.ndarray, path: Union[str, os.PathLike], site: Optional[str] = None, channels: int = 3,
                  intensity: str = "dtype") -> np.ndarray:
    """A decoded image ``(H, W)`` / ``(H, W, C)`` as float32 ``(channels, H, W)`` in [0, 1].

    Alpha is dropped; a grey image is repeated to 3 channels when ``channels=3``. ``intensity="dtype"`` divides
    8- and 16-bit images by their type's maximum (float images must already lie in [0, 1]); ``"minmax"``
    scales each channel of each image to [0, 1] (use it for 16-bit images that fill only a few bits).
    """
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    image = array[..., None] if array.ndim == 2 else array
    if image.ndim != 3:
        raise DataError(f"expected a 2D grey or colour image, got shape {array.shape}", path=path, site=site)
    image = image[..., : ALPHA_CHANNELS.get(image.shape[2], image.shape[2])]
    if image.shape[2] == 1 and channels == 3:
        image = np.repeat(image, 3, axis=2)
    if image.shape[2] != channels:
        raise DataError(f"image has {image.shape[2]} channels, expected {channels}", path=path, site=site)
    image = image.transpose(2, 0, 1)
    if intensity == "minmax":
        low = image.min(axis=(1, 2), keepdims=True).astype(np.float32)
        span = image.max(axis=(1, 2), keepdims=True) - low
        return ((image - low) / np.where(span > 0, span, 1)).astype(np.float32)
    if image.dtype in (np.uint8, np.uint16):
        return image.astype(np.float32) / np.iinfo(image.dtype).max
    if image.dtype.kind == "f" and image.size and 0 <= image.min() and image.max() <= 1:
        return image.astype(np.float32)
    raise DataError(f"cannot scale {image.dtype} intensities to [0, 1] by type; use intensity='minmax'",
                    path=path, site=site)


def binarise_mask(array: np.ndarray, path: Union[str, os.PathLike], site: Optional[str] = None) -> np.ndarray:
    """A one-channel instance or binary mask ``(H, W)`` as float32 ``(1, H, W)`` in {0, 1} (``mask > 0``).

    Negative or non-integer values are out of range and raise :class:`DataError`.
    """
    if array.ndim != 2:
        raise DataError(f"expected a one-channel mask, got shape {array.shape}", path=path, site=site)
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise DataError("mask holds non-integer values; expected instance ids or 0/1", path=path, site=site)
    if array.dtype.kind not in "bu" and array.size and array.min() < 0:
        raise DataError(f"mask value {array.min()} out of range: expected ids >= 0", path=path, site=site)
    return (array > 0)[None].astype(np.float32)


def load_pair(image_path: Union[str, os.PathLike], mask_path: Union[str, os.PathLike], site: Optional[str] = None,
              channels: int = 3, intensity: str = "dtype") -> Tuple[np.ndarray, np.ndarray]:
    """Read, check and convert one pair: image float32 ``(C, H, W)`` in [0, 1], mask float32 ``(1, H, W)``."""
    image = image_to_unit(read_image(image_path, site), image_path, site, channels, intensity)
    mask = binarise_mask(read_image(mask_path, site), mask_path, site)
    if image.shape[1:] != mask.shape[1:]:
        raise DataError(f"image size {image.shape[1:]} does not match mask size {mask.shape[1:]} ({mask_path})",
                        path=image_path, site=site)
    return image, mask


def split_site(stems: Sequence[str], site: str, seed: int = 0,
               fractions: Sequence[float] = DEFAULT_FRACTIONS) -> Dict[str, List[str]]:
    """Seeded ``training`` / ``validation`` / ``testing`` split of one site's image stems; no split may be empty."""
    parts = dict(zip(SPLITS, seeded_split(stems, fractions, site_seed(seed, site))))
    empty = [name for name, part in parts.items() if not part]
    if empty:
        raise DataError(f"{len(stems)} image(s) are too few for a non-empty {'/'.join(empty)} split with fractions "
                        f"{list(fractions)}", site=site)
    return parts


def tile_starts(size: int, patch_size: int) -> List[int]:
    """Start offsets of ``patch_size`` tiles covering ``size`` pixels; the last tile is aligned to the end."""
    if size <= patch_size:
        return [0]
    return list(range(0, size - patch_size, patch_size)) + [size - patch_size]


def _pad_to(array: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Zero-pad ``(C, H, W)`` at the bottom and right up to ``patch_size`` where it is smaller."""
    pad_h, pad_w = max(patch_size - array.shape[1], 0), max(patch_size - array.shape[2], 0)
    return F.pad(array, (0, pad_w, 0, pad_h)) if pad_h or pad_w else array


class NucleiDataset(Dataset):
    """One site's split of nuclei images and binary masks, loaded and checked when built, served as
    ``{"image": float32 (C, H, W) in [0, 1], "label": float32 (1, H, W) in {0, 1}}``.

    ``patch_size=None`` serves whole images. With ``patch_size=P``, images smaller than P are zero-padded
    (image and mask) at the bottom and right, and

    * ``random_crop=True``: item ``i`` is a ``P x P`` crop of image ``i`` at a random position (torch's RNG),
      for training;
    * ``random_crop=False``: the items are the ``P x P`` tiles of :func:`tile_starts` covering every image,
      for evaluation.

    ``transform`` (e.g. a MONAI dictionary transform) is applied to each item last.
    """

    def __init__(self, items: Sequence[Dict], base_dir: Union[str, os.PathLike], site: Optional[str] = None,
                 channels: int = 3, intensity: str = "dtype", patch_size: Optional[int] = None,
                 random_crop: bool = False, transform: Optional[Callable[[Dict], Dict]] = None):
        if random_crop and patch_size is None:
            raise ValueError("random_crop needs a patch_size")
        base_dir = Path(base_dir)
        self.pairs, self.names = [], []
        for item in items:
            if "image" not in item or "label" not in item:
                raise DataError(f"datalist item without 'image' and 'label': {item}", site=site)
            image, mask = load_pair(base_dir / item["image"], base_dir / item["label"], site, channels, intensity)
            self.pairs.append((torch.from_numpy(image), torch.from_numpy(mask)))
            self.names.append(item["image"])
        self.patch_size, self.random_crop, self.transform = patch_size, random_crop, transform
        if patch_size is None or random_crop:
            self.index = [(i, 0, 0) for i in range(len(self.pairs))]
        else:
            self.index = [(i, y, x) for i, (image, _) in enumerate(self.pairs)
                          for y in tile_starts(image.shape[1], patch_size)
                          for x in tile_starts(image.shape[2], patch_size)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        pair, y, x = self.index[index]
        image, mask = self.pairs[pair]
        if self.patch_size is not None:
            size = self.patch_size
            image, mask = _pad_to(image, size), _pad_to(mask, size)
            if self.random_crop:
                y = int(torch.randint(image.shape[1] - size + 1, ()))
                x = int(torch.randint(image.shape[2] - size + 1, ()))
            image, mask = image[:, y : y + size, x : x + size], mask[:, y : y + size, x : x + size]
        item = {"image": image, "label": mask}
        if self.transform is not None:
            item = self.transform(item)
        return {"image": torch.as_tensor(item["image"]).float(), "label": torch.as_tensor(item["label"]).float(),
                SAMPLE_ID: f"{self.names[pair]}@{y},{x}" if self.patch_size is not None else self.names[pair]}


def nuclei_datasets(datalist: Union[str, os.PathLike], base_dir: Union[str, os.PathLike], site: str,
                    patch_size: Optional[int] = None, channels: int = 3, intensity: str = "dtype",
                    train_transform: Optional[Callable[[Dict], Dict]] = None) -> Dict[str, NucleiDataset]:
    """``{split: NucleiDataset}`` of ``site`` from ``<datalist>/<site>.json`` (or the file ``datalist``).

    Training serves random ``patch_size`` crops through ``train_transform``; validation and testing serve
    the tiles covering each image (whole images when ``patch_size`` is None).
    """
    path = datalist_path(datalist, site)
    return {
        split: NucleiDataset(read_datalist(path, split, site), base_dir, site, channels, intensity, patch_size,
                             random_crop=split == "training" and patch_size is not None,
                             transform=train_transform if split == "training" else None)
        for split in SPLITS
    }
