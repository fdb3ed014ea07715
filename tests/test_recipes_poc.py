"""Deployment: a recipe runs in NVFlare 2.9's PocEnv, whose fresh kits allow medfl's classes through the project file
of ``medfl.recipes.envs.poc_env`` (PocEnv provisions anew for every job, so no site policy written by hand survives).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import BIN
from test_deploy_poc import FEDERATIONS, TINY_UNET

from medfl.recipes import recipe_for
from medfl.recipes.envs import poc_env

pytestmark = pytest.mark.deploy


def test_fedavg_recipe_runs_in_pocenv(tmp_path, shared_data, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    FEDERATIONS["prostate"].build(data, shared_data)
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir()
    # the POC's processes run `python3` from PATH: this interpreter's, with the installed medfl
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("NVFLARE_POC_WORKSPACE", str(tmp_path / "poc"))
    recipe = recipe_for("fedavg_prostate", dataset_root=str(data), num_rounds=1, num_threads=1, network=TINY_UNET)
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
    state = torch.load(app_servers[0] / "server_state.pt", weights_only=True)
    assert state["completed_round"] == 0
    kit = next((tmp_path / "poc").glob("*/prod_*"))
    for site in ("localhost", *recipe.sites):
        assert "medfl." in (kit / site / "local" / "resources.json.default").read_text(), site
