"""Decoding 2D image files (PNG, TIFF, JPEG) with Pillow, with errors that name the site and the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from medfl.common.data import check_finite
from medfl.common.errors import DataError

__all__ = ["read_image"]


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
