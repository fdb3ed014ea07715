"""A site's policy for jobs without custom code: allow the classes of the installed ``medfl`` package.

NVFlare builds a component of a job that carries no code (no ``app/custom``) only when its class path is on the
site's ``class_allow_list`` (``local/resources.json``; by default NVFlare's own classes). A site that installs
``medfl`` and runs its jobs adds the package prefix ``medfl.`` to that list, keeping everything already there:
:func:`allow_medfl`, or ``python -m medfl site-policy <site folder>``.

The same file serves a simulator workspace (``nvflare simulator`` copies ``<workspace>/local`` to every simulated
site) and a provisioned or POC startup kit (``<kit>/local/resources.json``, made from ``resources.json.default``
when the site has none yet). A project provisioned with :class:`MedflPolicyBuilder` among its builders gets kits that
allow medfl from the start (what a POC made by ``medfl.recipes.envs.poc_env`` uses, as PocEnv provisions anew for
every job).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
from nvflare.lighter.spec import Builder

from medfl.common.errors import DataError
from medfl.common.io import atomic_write_json

MEDFL_PREFIX = "medfl."
CLASS_ALLOW_LIST = "class_allow_list"
RESOURCES = "resources.json"
DEFAULT_RESOURCES = "resources.json.default"


def read_resources(path: Path) -> dict:
    """A site's resources file as a dict (``{"format_version": 2}`` when it does not exist)."""
    if not path.is_file():
        return {"format_version": 2}
    try:
        resources = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e})", path=path) from None
    if not isinstance(resources, dict):
        raise DataError("expected a JSON object", path=path)
    return resources


def with_medfl_allowed(resources: dict) -> dict:
    """``resources`` whose ``class_allow_list`` (NVFlare's default list when it has none) holds ``medfl.``."""
    allowed: List[str] = list(resources.get(CLASS_ALLOW_LIST, DEFAULT_CLASS_ALLOW_LIST))
    if MEDFL_PREFIX not in allowed:
        allowed.append(MEDFL_PREFIX)
    return {**resources, CLASS_ALLOW_LIST: allowed}


def allow_medfl(site_dir: os.PathLike) -> Path:
    """Add ``medfl.`` to the ``class_allow_list`` of ``<site_dir>/local/resources.json``; return the file.

    The file is created from ``resources.json.default`` (or empty) when missing; a list the site already has is
    kept, and NVFlare's default list is written out when the site has none, so nothing allowed before is lost.
    """
    local = Path(site_dir) / "local"
    target = local / RESOURCES
    resources = read_resources(target if target.is_file() else local / DEFAULT_RESOURCES)
    atomic_write_json(with_medfl_allowed(resources), target)
    return target


class MedflPolicyBuilder(Builder):
    """A provisioning builder (``project.yml``, after ``StaticFileBuilder``) that adds ``medfl.`` to the class
    allow-list of every server and client kit's ``local/resources.json.default``, the policy a site uses until it
    writes its own ``resources.json``."""

    def build(self, project, ctx) -> None:
        for participant in project.get_all_participants(["server", "client"]):
            path = Path(ctx.get_local_dir(participant)) / DEFAULT_RESOURCES
            atomic_write_json(with_medfl_allowed(read_resources(path)), path)
