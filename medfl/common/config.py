"""Per-site training configuration (``config_train.json``) with the ``DATASET_ROOT`` placeholder.

A job's ``config_train.json`` holds what a user tunes. Paths in it may start with the literal placeholder
``DATASET_ROOT``, as in the original NVFlare prostate examples: replace it in the file (the README's ``sed``
line) or, without editing the job, set the environment variable ``DATASET_ROOT`` on each site.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import DataError

PLACEHOLDER = "DATASET_ROOT"


def resolve_placeholder(value: str, site: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> str:
    """Replace ``DATASET_ROOT`` in ``value`` from the environment; fail clearly if it cannot be."""
    if PLACEHOLDER not in value:
        return value
    root = (os.environ if env is None else env).get(PLACEHOLDER)
    if not root:
        raise DataError(
            f"the path still contains the placeholder {PLACEHOLDER}: replace it in config_train.json "
            f"or set the environment variable {PLACEHOLDER} to the folder holding the prepared data",
            path=value,
            site=site,
        )
    return value.replace(PLACEHOLDER, root)


def load_train_config(path: os.PathLike, site: Optional[str] = None) -> Dict[str, Any]:
    """Read ``config_train.json`` as a dict (its settings class checks it; paths stay unresolved)."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("training configuration not found", path=path, site=site) from None
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e})", path=path, site=site) from None
    if not isinstance(config, dict):
        raise DataError("expected a JSON object", path=path, site=site)
    return config
