"""Atomic writes: a file is either the old version or the complete new one, never half-written."""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

import torch

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``, on error delete it.

    The temporary name keeps the target's extensions (``.nii.gz``), so writers that choose the format from
    the name (nibabel, PIL) write the right format. The writer creates the file, so it gets the usual
    permissions (a pre-created ``mkstemp`` file would leave every output readable by its owner only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp.{uuid.uuid4().hex}.{path.name}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_json(obj: Any, path: PathLike) -> None:
    """Write ``obj`` as indented JSON through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
