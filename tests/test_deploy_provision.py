"""The README's deployment walk-through on loopback: provision, preflight, start kits, submit the headline job."""

import pytest
import torch
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN, SMALL_SELECTOR
from helpers import PROJECT_ROOT, ProvisionedDeployment, make_job_variant

pytestmark = pytest.mark.deploy


def test_fedsm_in_a_provisioned_deployment(tmp_path, demo_prostate):
    job = make_job_variant("fedsm_prostate", tmp_path / "job", {"num_rounds": 1},
                           {"num_threads": 1, "selector_network": SMALL_SELECTOR, **PROSTATE_TRAIN})
    sites = {site: {"DATASET_ROOT": str(demo_prostate)} for site in PROSTATE_CLIENTS}
    with ProvisionedDeployment(tmp_path / "deploy", PROJECT_ROOT / "deploy" / "project.yml", sites) as deployment:
        job_id = deployment.submit_and_wait(job)
        deployment.nvflare("job", "download", job_id, "-o", tmp_path / "result")
    app_server = tmp_path / "result" / job_id / "workspace" / "app_server"
    assert torch.load(app_server / "best_selector_model.pt", weights_only=True)["state_dict"]
