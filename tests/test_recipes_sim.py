"""End-to-end: FedSM's and FedMAS's recipes run one round in NVFlare 2.9's SimEnv on their demo federations (the POC
tests' federations and tiny overrides). The other methods' recipes run in SimEnv in their own end-to-end modules, each
with something more on the way: FedAvg with MLflow beside TensorBoard (``test_e2e_prostate.py``), HarmoFL from the
command line (``test_e2e_harmofl.py``), PRR-FL with its cross-site matrix (``test_e2e_prrfl.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch
from helpers import run_in_simenv
from test_deploy_poc import FEDERATIONS

from medfl.common.cross_site import read_cross_site
from medfl.recipes import recipe_for

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


def test_fedsm_cross_site_matrix_of_global_personalised_and_super_models(tmp_path, demo_prostate):
    recipe = recipe_for("fedsm_prostate", dataset_root=str(demo_prostate), cross_site_evaluation=True,
                        **small("prostate", "fedsm_prostate"))
    app = run_in_simenv(recipe, tmp_path) / "server" / "simulate_job" / "app_server"
    metric, matrix = read_cross_site(app)
    sites = sorted(recipe.sites)
    assert metric == "dice"
    assert sorted(matrix) == sorted(["global", "super", *(f"personal_{s}" for s in sites)])
    assert all(sorted(row) == sites and all(0 <= v <= 1 for v in row.values()) for row in matrix.values())
    assert all((app / f"cross_site.{suffix}").is_file() for suffix in ("csv", "md", "png"))
    assert torch.load(app / "server_state.pt", weights_only=True)["extra"]["selector_moments"]


def test_fedmas_runs_in_simenv(tmp_path, data_root):
    recipe = recipe_for("fedmas_dermoscopy", dataset_root=str(data_root("dermoscopy")),
                        **small("dermoscopy", "fedmas_dermoscopy"))
    app = run_in_simenv(recipe, tmp_path) / "server" / "simulate_job" / "app_server"
    assert torch.load(app / "server_state.pt", weights_only=True)["completed_round"] == 0
    assert torch.load(app / "last_global_model.pt", weights_only=True)["state_dict"]
