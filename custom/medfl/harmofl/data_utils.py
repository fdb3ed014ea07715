"""Helpers shared by the HarmoFL data modules: Pillow image decoding and seeded, sized splits.

Candidates for ``medfl.common`` (nothing here is HarmoFL-specific).
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, TypeVar, Union

import numpy as np
from PIL import Image

from medfl.common.data import check_finite
from medfl.common.errors import DataError

__all__ = ["part_sizes", "read_image", "seeded_split", "site_seed"]

T = TypeVar("T")


def read_image(path: Union[str, os.PathLike], site: Optional[str] = None) -> np.ndarray:
    """Decode one 2D image file with Pillow into ``(H, W)`` or ``(H, W, C)`` in the file's own dtype.

    PNG, TIFF and JPEG are read as Pillow opens them: 8-bit modes give ``uint8``, 16-bit grey (``I;16``,
    e.g. fluorescence TIFF) gives native-endian ``uint16``, ``I`` gives ``int32``, ``F`` gives ``float32``,
    ``1`` gives ``bool`` and a palette image (``P``) gives its indices. A missing, unreadable, truncated or
    multi-page file, or a float image with NaN or infinite values, raises :class:`DataError` naming the site and
    the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("image file not found", path=path, site=site)
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            array = np.array(image)
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for unknown, corrupt or truncated files
        raise DataError(f"cannot read image ({type(e).__name__}: {e})", path=path, site=site) from None
    if frames > 1:
        raise DataError(f"{frames} frames or pages; expected a single 2D image", path=path, site=site)
    return check_finite(array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("=")), path, site)


def site_seed(seed: int, site: str) -> List[int]:
    """A seed for ``np.random.default_rng`` that depends on ``seed`` and the site's name, not on site order."""
    return [seed, zlib.crc32(site.encode())]


def part_sizes(count: int, fractions: Sequence[float]) -> List[int]:
    """Sizes proportional to ``fractions`` that sum exactly to ``count`` (largest remainder; ties go first)."""
    if not fractions or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    shares = [count * f for f in fractions]
    sizes = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: sizes[i] - shares[i])
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    return sizes


def seeded_split(keys: Sequence[T], fractions: Sequence[float], seed: Union[int, Sequence[int]]) -> List[List[T]]:
    """Shuffle the sorted ``keys`` with ``np.random.default_rng(seed)`` and cut them into parts of
    :func:`part_sizes`. The result depends only on the set of keys, the fractions and the seed."""
    ordered = sorted(keys)
    order = np.random.default_rng(seed).permutation(len(ordered))
    parts, start = [], 0
    for size in part_sizes(len(ordered), fractions):
        parts.append([ordered[i] for i in order[start : start + size]])
        start += size
    return parts
