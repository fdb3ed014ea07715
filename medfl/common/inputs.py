"""Checks a data preparation runs on its whole input before it writes anything (issue 19).

A preparation first lists every file it will read and checks that each is present and that its header can be
decoded; only then does it start writing, so that a bad file fails in one line naming it instead of after
hours, half-way through the output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

from PIL import Image

from medfl.common.errors import DataError

__all__ = ["image_header", "read_rgb_square"]

PILLOW_ERRORS = (OSError, SyntaxError, ValueError)  # what Pillow raises for unknown, corrupt or truncated files


def image_header(path: Union[str, os.PathLike], site: Optional[str] = None) -> Tuple[int, int]:
    """``(width, height)`` from an image file's header (Pillow reads only the header here, not the pixels).

    A missing file, or one whose header Pillow cannot decode, raises :class:`DataError` naming the site and
    the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("image file not found", path=path, site=site)
    try:
        with Image.open(path) as image:
            return image.size
    except PILLOW_ERRORS as e:
        raise DataError(f"cannot read image header ({type(e).__name__}: {e})", path=path, site=site) from None


def read_rgb_square(path: Union[str, os.PathLike], size: int, site: Optional[str] = None) -> Image.Image:
    """Decode an image file as RGB and resize it to ``size`` x ``size`` (bilinear).

    A file that cannot be decoded (a truncated JPEG passes :func:`image_header` but fails here) raises
    :class:`DataError` naming the site and the file.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except PILLOW_ERRORS as e:
        raise DataError(f"cannot decode image ({type(e).__name__}: {e})", path=path, site=site) from None
