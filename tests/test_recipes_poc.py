"""Deployment: one recipe of every method runs in NVFlare 2.9's PocEnv (what ``python -m medfl run <job> --env poc``
does), whose fresh kits allow medfl's classes through the project file of ``medfl.recipes.envs.poc_env`` (PocEnv
provisions anew for every job, so no site policy written by hand survives).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import pytest
from helpers import BIN
from test_deploy_poc import FEDERATIONS, POC_ENV_JOBS, check_outputs

from medfl.recipes import JOBS, RECIPES, recipe_for
from medfl.recipes.envs import poc_env

pytestmark = pytest.mark.deploy

@pytest.fixture(scope="module")
def dataset_root(shared_data, tmp_path_factory):
    """``dataset_root(federation)``: its demo ``DATASET_ROOT``, built once per module."""
    built: Dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tmp_path_factory.mktemp(f"data_{name}")
            FEDERATIONS[name].build(built[name], shared_data)
        return built[name]

    return get


def test_every_method_has_a_job_here():
    assert {JOBS[job] for job in POC_ENV_JOBS} == set(RECIPES), "a method without a PocEnv test"


@pytest.mark.parametrize("job", list(POC_ENV_JOBS))
def test_a_recipe_of_each_method_runs_in_pocenv(job, tmp_path, dataset_root, monkeypatch):
    federation = POC_ENV_JOBS[job]
    server, train = FEDERATIONS[federation].jobs[job]
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir()
    # the POC's processes run `python3` from PATH: this interpreter's, with the installed medfl
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("NVFLARE_POC_WORKSPACE", str(tmp_path / "poc"))
    recipe = recipe_for(job, dataset_root=str(dataset_root(federation)), **server, **train, num_rounds=1,
                        num_threads=1)
    env = poc_env(recipe.sites, tmp_path / "poc")
    try:
        job_run = recipe.run(env)
        result = job_run.get_result(timeout=600, clean_up=False)  # waits, downloads, stops the POC
        status = job_run.get_status()
    finally:
        env.stop(clean_up=False)
    assert status == "FINISHED:COMPLETED", status
    app_servers = list(Path(result).rglob("app_server"))
    assert app_servers, f"no server app in the downloaded result {result}"
    check_outputs(app_servers[0].parent, recipe.sites)
    if job == "fedsm_prostate":
        for site in recipe.sites:
            assert (app_servers[0] / f"last_personal_{site}_model.pt").is_file(), site
    kit = next((tmp_path / "poc").glob("*/prod_*"))
    for site in ("localhost", *recipe.sites):
        assert "medfl." in (kit / site / "local" / "resources.json.default").read_text(), site
