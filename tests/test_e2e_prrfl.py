"""End-to-end: prrfl_dermoscopy (its recipe in SimEnv, with the cross-site matrix) and its FedAvg baseline (the job
folder in the NVFlare simulator) on the HAM10000-mini federation (2 rounds, 32x32 images, a 4-channel slim VGG),
then the result script on both workspaces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_job_variant, run, run_in_simenv, run_simulator

from medfl.common.cross_site import read_cross_site
from medfl.federations.dermoscopy.preparation import prepare_federation
from medfl.prrfl.pfa import is_bn_key_name
from medfl.recipes import recipe_for

pytestmark = pytest.mark.e2e

CLIENTS = ("clientA", "clientB", "clientC", "clientD")
IMAGE_SIZE = 32
SMALL = {
    "num_threads": 1,
    "image_size": IMAGE_SIZE,
    "network": {"name": "medfl.federations.dermoscopy.networks:vgg16_slim",
                "args": {"blocks": [[4], [4], [4], [4], [4]], "hidden_features": 4}},
    "local_epochs": 2,
}


@pytest.fixture(scope="module")
def dataset_root(shared_data, tmp_path_factory) -> Path:
    """``DATASET_ROOT`` holding ``prrfl_ham10000``, the HAM10000-mini federation prepared at 32x32."""
    root = tmp_path_factory.mktemp("prrfl_e2e")
    prepare_federation(shared_data / "ham10000_mini", root / "prrfl_ham10000", image_size=IMAGE_SIZE,
                       log=lambda message: None)
    return root


def run_job(job: str, dataset_root: Path, target: Path) -> Path:
    variant = make_job_variant(job, target / "job", {"num_rounds": 2}, SMALL)
    workspace = target / "workspace"
    run_simulator(variant, workspace, CLIENTS, dataset_root)
    return workspace


@pytest.fixture(scope="module")
def prrfl_workspace(dataset_root, tmp_path_factory) -> Path:
    """PRR-FL's recipe in SimEnv (what ``python -m medfl run prrfl_dermoscopy --env sim`` runs), ending with the
    cross-site matrix of the personalised models."""
    recipe = recipe_for("prrfl_dermoscopy", dataset_root=str(dataset_root), cross_site_evaluation=True,
                        num_rounds=2, **SMALL)
    return run_in_simenv(recipe, tmp_path_factory.mktemp("prrfl_job"))


@pytest.fixture(scope="module")
def fedavg_workspace(dataset_root, tmp_path_factory) -> Path:
    return run_job("fedavg_dermoscopy", dataset_root, tmp_path_factory.mktemp("fedavg_job"))


def test_prrfl_job_keeps_personalised_models_on_the_clients(prrfl_workspace):
    app_server = prrfl_workspace / "server" / "simulate_job" / "app_server"
    assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 1
    assert not list(app_server.glob("*personal*")), "personalised models must never reach the server"
    deputies = {c: torch.load(app_server / f"last_deputy_{c}_model.pt", weights_only=True)["state_dict"]
                for c in CLIENTS}
    assert not any(is_bn_key_name(key) for key in deputies["clientA"]), "BatchNorm must not travel"
    key = "layer1.0.conv.weight"
    assert not torch.allclose(deputies["clientA"][key], deputies["clientB"][key]), "PFA returns one deputy per client"
    for client in CLIENTS:
        app_client = prrfl_workspace / client / "simulate_job" / f"app_{client}"
        best = torch.load(app_client / "best_personal_model.pt", weights_only=True)
        # 2 rounds: the selection window (last 20 %) is round 1, delivered by the final validation task
        assert best["round_number"] == 1 and 0.0 <= best["score"] <= 1.0
        assert "layer1.0.bn.running_mean" in best["state_dict"]
        assert torch.load(app_client / "last_personal_model.pt", weights_only=True)["round_number"] == 1
        events = prrfl_workspace / "server" / "simulate_job" / "tb_events" / client
        assert list(events.glob("events.*")), client


def test_prrfl_cross_site_matrix_of_the_personalised_models(prrfl_workspace):
    metric, matrix = read_cross_site(prrfl_workspace / "server" / "simulate_job" / "app_server")
    assert metric == "macro_f1"
    assert sorted(matrix) == [f"personal_{c}" for c in CLIENTS]
    assert all(sorted(row) == list(CLIENTS) and all(0 <= v <= 1 for v in row.values()) for row in matrix.values())


def test_fedavg_baseline_job(fedavg_workspace):
    app_server = fedavg_workspace / "server" / "simulate_job" / "app_server"
    for kind in ("best", "last"):
        saved = torch.load(app_server / f"{kind}_global_model.pt", weights_only=True)
        assert "layer1.0.bn.running_mean" in saved["state_dict"]
    assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 1


def test_results_script(prrfl_workspace, fedavg_workspace, dataset_root, tmp_path):
    output = tmp_path / "retrogress.png"
    out = run(["python", "result_stat/prrfl_dermoscopy_results.py", "--prrfl_workspace", prrfl_workspace,
               "--fedavg_workspace", fedavg_workspace, "--data_root", dataset_root / "prrfl_ham10000",
               "--output", output]).stdout
    lines = out.splitlines()
    for name in (*CLIENTS, "overall"):
        row = next(line for line in lines if line.startswith(f"{name} "))
        assert len(row.split("|")) == 3 and len(row.split()) == 9, row  # name | 3 PRR-FL | 3 FedAvg metrics
    # the personalised model does not change at a communication: no retrogress by construction
    for client in CLIENTS:
        summary = next(line for line in lines if line.startswith(f"{client}: mean change"))
        assert "PRR-FL personalised +0.0000" in summary and "PRR-FL deputy" in summary and "FedAvg" in summary
    assert output.is_file() and output.stat().st_size > 0
