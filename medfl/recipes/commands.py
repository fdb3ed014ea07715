"""The recipe commands of ``python -m medfl``: ``jobs`` (what there is, and each job's settings), ``export`` (job
folders, the committed ``jobs/`` among them) and ``run`` (a job in the simulator, a POC or a deployment)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from medfl.variant import parse_assignments

from . import JOBS, job_spec, recipe_for
from .base import split_settings
from .envs import poc_env, prod_env, sim_env

ENVS = ("sim", "poc", "prod")
JOB_FOLDER_MODE = 0o755
DEFAULT_WORKSPACES = {"sim": "/tmp/nvflare/simulation", "poc": "/tmp/nvflare/poc"}
SITES_SHOWN = 8  # `jobs` lists a federation of more sites by its first and last names


def site_list(sites, shown: int = SITES_SHOWN) -> str:
    """The sites, comma-separated; a long list as its first and last names and its length."""
    if len(sites) <= shown:
        return ", ".join(sites)
    return f"{', '.join(sites[:2])}, ..., {sites[-1]} ({len(sites)} sites)"


def list_jobs() -> str:
    """One line per job: its name, its method's recipe, its sites and what it is."""
    lines = []
    for job in sorted(JOBS):
        spec = job_spec(job)
        lines.append(f"{job:<22} {JOBS[job].__name__:<14} {spec.description}\n{'':<37}sites: {site_list(spec.sites)}")
    return "\n".join(lines)


def describe_job(job: str) -> str:
    """Every setting of ``job``: its value in the job (workflow and clients) and its description."""
    spec = job_spec(job)
    server, train = split_settings(spec, {})
    recipe = JOBS[job]
    lines = [f"{job}: {spec.description}", f"recipe {recipe.__module__}.{recipe.__name__}; "
             f"workflow {spec.controller.__module__}.{spec.controller.__name__}; "
             f"client {spec.executor.__module__}.{spec.executor.__name__}", f"sites: {site_list(spec.sites)}", "",
             "settings (--set KEY=VALUE; [s]: the workflow's, [c]: config_train.json's; = the job's value):"]
    server_fields, train_fields = spec.controller.Settings.model_fields, spec.executor.Settings.model_fields
    values = {**spec.options, **server, **train}
    for key, description in recipe.job_options(job).items():
        sides = "".join(side for side, fields in (("s", server_fields), ("c", train_fields)) if key in fields)
        if key in values:
            shown = f" = {json.dumps(values[key])}"
        else:
            field = server_fields.get(key) or train_fields[key]
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            shown = "" if field.is_required() else f" (default {json.dumps(default, default=str)})"
        lines.append(f"  {key} [{sides or 'recipe'}]{shown}\n      {description}")
    return "\n".join(lines)


def export_jobs(jobs: Sequence[str], folder: Path) -> List[Path]:
    """Export each job's recipe (its committed values) into ``folder/<job>/``; return the job folders."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for job in jobs:
        recipe_for(job).export(str(folder))
        os.chmod(folder / job, JOB_FOLDER_MODE)  # NVFlare builds the folder with mkdtemp (owner only)
        written.append(folder / job)
    return written


def run_job(job: str, env: str, rounds: Optional[int] = None, data_root: Optional[str] = None,
            workspace: Optional[str] = None, startup_kit: Optional[str] = None, clients: Optional[List[str]] = None,
            tracking: str = "tensorboard", cross_site: bool = False, settings: Optional[Dict[str, object]] = None
            ) -> Optional[str]:
    """Run ``job`` in ``env`` and return where its results are (the simulator's workspace, or the downloaded job)."""
    overrides = dict(settings or {})
    if rounds is not None:
        overrides["num_rounds"] = rounds
    if cross_site:
        overrides["cross_site_evaluation"] = True
    if data_root and env != "prod":  # the sites run on this machine, in other working folders
        data_root = str(Path(data_root).resolve())
    recipe = recipe_for(job, sites=clients, dataset_root=data_root, tracking=tracking, **overrides)
    if env == "sim":
        run = recipe.run(sim_env(recipe.sites, workspace or DEFAULT_WORKSPACES["sim"]))
        return run.get_result()
    if env == "poc":
        run = recipe.run(poc_env(recipe.sites, workspace or DEFAULT_WORKSPACES["poc"]))
        result = run.get_result(clean_up=False)
        print(f"job {run.get_job_id()}: {run.get_status()}")
        return result
    if env == "prod":
        if not startup_kit:
            raise ValueError("--env prod needs --startup-kit (the admin's startup kit folder)")
        run = recipe.run(prod_env(startup_kit))
        result = run.get_result(clean_up=False)
        print(f"job {run.get_job_id()}: {run.get_status()}")
        return result
    raise ValueError(f"--env must be one of {ENVS}, got {env!r}")


def parse_settings(pairs: Sequence[str]) -> Dict[str, object]:
    return parse_assignments(list(pairs))
