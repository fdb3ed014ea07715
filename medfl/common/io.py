"""Atomic, durable writes: a file is either the old version or the complete new one, never half-written.

The new content is written to a temporary file beside the target, flushed to disk (``fsync``), renamed over the
target, and the folder is flushed too, so that after a crash or power loss the target holds the old or the new
content, never an empty or truncated file.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

import torch

PathLike = Union[str, os.PathLike]
TEMPORARY_PREFIX = ".tmp."  # temporary names are ".tmp.<32 hex digits>.<target name>"


def temporary_name(path: PathLike, prefix: str = TEMPORARY_PREFIX) -> Path:
    """A fresh hidden name beside ``path`` that keeps its name at the end (and so its extensions)."""
    path = Path(path)
    return path.parent / f"{prefix}{uuid.uuid4().hex}.{path.name}"


def fsync_path(path: PathLike) -> None:
    """Flush a file's or a folder's content (a folder: its entries) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success flush it, rename it over ``path`` and flush the
    folder; on error delete it.

    The temporary name keeps the target's extensions (``.nii.gz``), so writers that choose the format from
    the name (nibabel, PIL) write the right format. The writer creates the file, so it gets the usual
    permissions (a pre-created ``mkstemp`` file would leave every output readable by its owner only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_json(obj: Any, path: PathLike) -> None:
    """Write ``obj`` as indented JSON through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


MAX_REASON_CHARS = 200  # of torch's own error, quoted in ours


def load_torch_file(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file torch cannot read (truncated, another format,
    unsafe objects) raises ``ValueError`` with torch's first sentence, for the caller's error naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, non-torch or unsafe files
        first_sentence = str(e).splitlines()[0].split(". ")[0][:MAX_REASON_CHARS] if str(e) else ""
        raise ValueError(f"{type(e).__name__}: {first_sentence}") from None
