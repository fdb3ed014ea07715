"""End-to-end: every method's recipe runs one round in NVFlare 2.9's SimEnv on its demo federation (the POC tests'
federations and tiny overrides), with MLflow tracking, the cross-site matrix and the command line along the way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest
import torch
from helpers import run
from test_deploy_poc import FEDERATIONS

from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver

from medfl.common.cross_site import read_cross_site
from medfl.common.curves import read_curves, read_mlflow_curves, read_run_curves
from medfl.recipes import recipe_for
from medfl.recipes.base import FED_EVENT_PREFIX
from medfl.recipes.envs import sim_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def data_root(shared_data, tmp_path_factory):
    """``data_root(federation)``: its demo ``DATASET_ROOT``, built once per module."""
    built: Dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            root = tmp_path_factory.mktemp(f"data_{name}")
            FEDERATIONS[name].build(root, shared_data)
            built[name] = root
        return built[name]

    return get


def small(federation: str, job: str) -> dict:
    """The POC tests' tiny overrides of ``job``, one round, one torch thread per client."""
    server, train = FEDERATIONS[federation].jobs[job]
    return {**server, **train, "num_rounds": 1, "num_threads": 1}


def simulate(recipe, workspace_root: Path) -> Path:
    """Run ``recipe`` in SimEnv; return the server's run folder."""
    result = recipe.run(sim_env(recipe.sites, workspace_root)).get_result()
    assert Path(result) == workspace_root / recipe.name
    return Path(result) / "server" / "simulate_job"


def test_fedavg_mlflow_store_holds_the_curves_tensorboard_gets(tmp_path, data_root):
    pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'medfl[tracking]'")
    recipe = recipe_for("fedavg_prostate", dataset_root=str(data_root("prostate")), tracking="mlflow",
                        **small("prostate", "fedavg_prostate"))
    # both receivers on the server, so that one run feeds both stores
    recipe._job.to_server(TBAnalyticsReceiver(events=[FED_EVENT_PREFIX + "analytix_log_stats"]), id="tb_receiver")
    run_dir = simulate(recipe, tmp_path)
    assert (run_dir / "mlflow.db").is_file()
    from_mlflow, from_tb = read_mlflow_curves(run_dir / "mlflow.db"), read_curves(run_dir / "tb_events")
    assert sorted(from_mlflow) == sorted(recipe.sites) == sorted(from_tb)
    for site in recipe.sites:
        assert set(from_mlflow[site]) == set(from_tb[site]) and "val/global" in from_tb[site], site
        for tag, (steps, values) in from_tb[site].items():
            assert from_mlflow[site][tag][0] == steps, (site, tag)
            assert from_mlflow[site][tag][1] == pytest.approx(values, rel=1e-6), (site, tag)
    assert read_run_curves(run_dir, "mlflow") == from_mlflow
    plot = run(["python", "result_stat/plot_tensorboard_events.py", "--workspace", run_dir.parents[1],
                "--tracking", "mlflow", "--output", tmp_path / "curves.png"]).stdout
    assert (tmp_path / "curves.png").is_file(), plot


def test_fedsm_cross_site_matrix_of_global_personalised_and_super_models(tmp_path, data_root):
    recipe = recipe_for("fedsm_prostate", dataset_root=str(data_root("prostate")), cross_site_evaluation=True,
                        **small("prostate", "fedsm_prostate"))
    app = simulate(recipe, tmp_path) / "app_server"
    metric, matrix = read_cross_site(app)
    sites = sorted(recipe.sites)
    assert metric == "dice"
    assert sorted(matrix) == sorted(["global", "super", *(f"personal_{s}" for s in sites)])
    assert all(sorted(row) == sites and all(0 <= v <= 1 for v in row.values()) for row in matrix.values())
    assert all((app / f"cross_site.{suffix}").is_file() for suffix in ("csv", "md", "png"))
    assert torch.load(app / "server_state.pt", weights_only=True)["extra"]["selector_moments"]


def test_harmofl_runs_from_the_command_line(tmp_path, data_root):
    train = small("prostate", "harmofl_prostate_2d")
    out = run(["python", "-m", "medfl", "run", "harmofl_prostate_2d", "--env", "sim", "--rounds", "1",
               "--data-root", data_root("prostate"), "--workspace", tmp_path,
               "--set", *(f"{k}={json.dumps(v)}" for k, v in train.items() if k != "num_rounds")]).stdout
    workspace = tmp_path / "harmofl_prostate_2d"
    assert f"results: {workspace}" in out
    app = workspace / "server" / "simulate_job" / "app_server"
    assert (app / "harmofl_amplitude.pt").is_file() and (app / "last_global_model.pt").is_file()
    allowed = json.loads((workspace / "local" / "resources.json").read_text())["class_allow_list"]
    assert "medfl." in allowed, "the simulator's workspace got medfl's site policy"


def test_prrfl_cross_site_matrix_of_the_personalised_models(tmp_path, data_root):
    recipe = recipe_for("prrfl_dermoscopy", dataset_root=str(data_root("dermoscopy")), cross_site_evaluation=True,
                        **small("dermoscopy", "prrfl_dermoscopy"))
    app = simulate(recipe, tmp_path) / "app_server"
    metric, matrix = read_cross_site(app)
    assert metric == "macro_f1"
    assert sorted(matrix) == [f"personal_{s}" for s in sorted(recipe.sites)]
    assert all(sorted(row) == sorted(recipe.sites) for row in matrix.values())


def test_fedmas_runs_in_simenv(tmp_path, data_root):
    recipe = recipe_for("fedmas_dermoscopy", dataset_root=str(data_root("dermoscopy")),
                        **small("dermoscopy", "fedmas_dermoscopy"))
    app = simulate(recipe, tmp_path) / "app_server"
    assert torch.load(app / "server_state.pt", weights_only=True)["completed_round"] == 0
    assert torch.load(app / "last_global_model.pt", weights_only=True)["state_dict"]
