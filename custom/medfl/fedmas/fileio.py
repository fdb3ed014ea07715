"""Atomic file writes: a reader never sees a half-written CSV, image or checkpoint."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` to write to; rename it onto ``path`` if the block succeeds.

    The temporary name keeps ``path``'s suffix so that writers which infer the format from it (PIL) still
    work, and the writer creates the file, so the usual permissions apply. On any error the temporary
    file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.tmp{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
