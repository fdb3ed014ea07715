"""Where a recipe runs: NVFlare's simulator, a POC on this machine, or a provisioned deployment.

* :func:`sim_env`: ``SimEnv`` with the recipe's sites; the recipe writes medfl's site policy into the simulator's
  workspace before the run (:meth:`~medfl.recipes.base.MedflRecipe.process_env`).
* :func:`poc_env`: ``PocEnv`` provisions a fresh POC for every job, so the site policy must come with the
  provisioning: this writes a project file with the sites, free ports and
  :class:`~medfl.site.MedflPolicyBuilder`, and points NVFlare's POC workspace at ``workspace``.
* :func:`prod_env`: ``ProdEnv`` on an admin's startup kit; each site has allowed medfl itself
  (``python -m medfl site-policy <kit>``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence

import yaml

from nvflare.recipe.poc_env import PocEnv
from nvflare.recipe.prod_env import ProdEnv
from nvflare.recipe.sim_env import SimEnv

from medfl.common.errors import DataError

POC_ADMIN = "admin@nvidia.com"  # PocEnv's default user, the project admin of the POC
POC_SERVER = "localhost"
POC_WORKSPACE_ENV = "NVFLARE_POC_WORKSPACE"
PROJECT_FILE = "medfl_poc_project.yml"


def sim_env(sites: Sequence[str], workspace_root: os.PathLike) -> SimEnv:
    """The simulator with one thread per site; the run's workspace is ``<workspace_root>/<job name>``."""
    return SimEnv(clients=list(sites), workspace_root=str(workspace_root))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poc_project(sites: Sequence[str], target: Path) -> Path:
    """A POC project file: a server on free local ports, the sites, the admin and medfl's policy builder."""
    builders = [
        {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder", "args": {"template_file": ["master_template.yml"]}},
        {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
        {"path": "medfl.site.MedflPolicyBuilder"},
        {"path": "nvflare.lighter.impl.cert.CertBuilder"},
        {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
    ]
    participants = [{"name": POC_SERVER, "type": "server", "org": "medfl", "fed_learn_port": free_port(),
                     "admin_port": free_port()},
                    *({"name": site, "type": "client", "org": "medfl"} for site in sites),
                    {"name": POC_ADMIN, "type": "admin", "org": "medfl", "role": "project_admin"}]
    project = {"api_version": 3, "name": "medfl_poc", "description": "medfl POC", "participants": participants,
               "builders": builders}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(project, sort_keys=False))
    return target


def poc_env(sites: Sequence[str], workspace: os.PathLike) -> PocEnv:
    """A POC of ``sites`` in ``workspace`` (NVFlare deletes and provisions it anew for every job) whose kits allow
    medfl's classes. Sets ``NVFLARE_POC_WORKSPACE`` for this process, as NVFlare reads the POC's place from it."""
    workspace = Path(workspace).resolve()
    os.environ[POC_WORKSPACE_ENV] = str(workspace)
    project = poc_project(sites, workspace.parent / f"{workspace.name}_{PROJECT_FILE}")
    return PocEnv(project_conf_path=str(project), username=POC_ADMIN)


def prod_env(startup_kit: os.PathLike) -> ProdEnv:
    """A provisioned deployment, through the admin startup kit ``startup_kit``."""
    if not Path(startup_kit).is_dir():
        raise DataError("not a folder: give the admin's startup kit (prod_NN/<admin name>)", path=startup_kit)
    return ProdEnv(startup_kit_location=str(startup_kit))
