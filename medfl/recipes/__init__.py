"""medfl's methods as NVIDIA FLARE 2.9 recipes: ``recipe.execute(SimEnv(...) | PocEnv(...) | ProdEnv(...))`` runs a
job, ``recipe.export(folder)`` writes its job folder (the committed ``jobs/<job>/`` are these exports).

    from medfl.recipes import recipe_for
    from medfl.recipes.envs import sim_env
    recipe = recipe_for("fedsm_prostate", num_rounds=5, dataset_root="/data")
    recipe.execute(sim_env(recipe.sites, "/tmp/nvflare"))   # or envs.poc_env(...), envs.prod_env(kit)

One recipe class per method (:class:`FedAvgRecipe`, :class:`FedSMRecipe`, :class:`HarmoFLRecipe`,
:class:`PRRFLRecipe`, :class:`FedMASRecipe`), each holding its jobs' values (:class:`~medfl.recipes.base.JobSpec`).
"""

from __future__ import annotations

from typing import Dict, Type

from .base import JobSpec, MedflRecipe
from .fedavg import FedAvgRecipe
from .fedmas import FedMASRecipe
from .fedsm import FedSMRecipe
from .harmofl import HarmoFLRecipe
from .prrfl import PRRFLRecipe

RECIPES = (FedSMRecipe, FedAvgRecipe, HarmoFLRecipe, PRRFLRecipe, FedMASRecipe)
JOBS: Dict[str, Type[MedflRecipe]] = {job: recipe for recipe in RECIPES for job in recipe.jobs}

__all__ = ["JOBS", "RECIPES", "FedAvgRecipe", "FedMASRecipe", "FedSMRecipe", "HarmoFLRecipe", "JobSpec",
           "MedflRecipe", "PRRFLRecipe", "job_spec", "recipe_for"]


def job_spec(job: str) -> JobSpec:
    if job not in JOBS:
        raise KeyError(f"no job {job!r}; jobs: {', '.join(sorted(JOBS))}")
    return JOBS[job].jobs[job]


def recipe_for(job: str, **kwargs) -> MedflRecipe:
    """The recipe of ``job`` (a name of ``jobs/``) with ``kwargs`` (see :class:`~medfl.recipes.base.MedflRecipe`)."""
    job_spec(job)
    return JOBS[job](job, **kwargs)
