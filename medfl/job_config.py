"""A job folder's configuration, checked through the same typed settings the workflow and executors load.

``check_job(job)`` builds nothing: it imports every ``medfl`` workflow of ``config_fed_server.json`` and every
``medfl`` executor of ``config_fed_client.json`` and validates their settings (the workflow ``args``, and
``config_train.json`` for the executors), so a typo fails before a job is submitted, with the file and the key.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

from medfl.common.errors import DataError

SERVER_CONFIG = "config_fed_server.json"
CLIENT_CONFIG = "config_fed_client.json"
TRAIN_CONFIG = "config_train.json"


def read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e})", path=path) from None


def config_dirs(job: Path) -> Iterator[Path]:
    """The ``config`` folders of a job's apps (``app/`` or one ``app_<site>/`` each)."""
    found = sorted(p / "config" for p in Path(job).glob("app*") if (p / "config").is_dir())
    if not found:
        raise DataError("no app*/config folder: not a job folder", path=job)
    return iter(found)


def medfl_class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def medfl_components(config: Dict[str, Any], section: str, key: str = "") -> Iterator[Tuple[str, Dict[str, Any]]]:
    """``(class path, args)`` of the medfl components of a config section (``workflows``, ``executors``)."""
    for entry in config.get(section, []):
        component = entry.get(key, entry) if key else entry
        if str(component.get("path", "")).startswith("medfl."):
            yield component["path"], component.get("args", {})


def check_job(job: Path) -> None:
    """Validate every medfl workflow's args and every medfl executor's ``config_train.json`` of ``job``."""
    for config_dir in config_dirs(job):
        server_file = config_dir / SERVER_CONFIG
        if server_file.is_file():
            for path, args in medfl_components(read_json(server_file), "workflows"):
                settings = getattr(medfl_class(path), "Settings", None)
                if settings is not None:
                    settings.load(args, str(server_file), "server")
        client_file = config_dir / CLIENT_CONFIG
        if client_file.is_file():
            for path, args in medfl_components(read_json(client_file), "executors", "executor"):
                settings = getattr(medfl_class(path), "Settings", None)
                train_file = config_dir / args.get("config_train_filename", TRAIN_CONFIG)
                if settings is not None:
                    settings.load(read_json(train_file), str(train_file))
