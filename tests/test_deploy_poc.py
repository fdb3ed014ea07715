"""Deployment smoke test: the prostate jobs, as committed (code linked from custom/), run in a POC deployment."""

import pytest
import torch

from conftest import PROSTATE_CLIENTS
from helpers import PocDeployment, make_job_variant

pytestmark = pytest.mark.deploy


def test_prostate_jobs_run_in_poc(tmp_path, demo_prostate):
    jobs = {job: make_job_variant(job, tmp_path / "jobs" / job, {"num_rounds": 1}, {"num_threads": 1}, keep_links=True)
            for job in ("fedavg_prostate", "fedsm_prostate")}
    for job in jobs.values():
        assert any(p.is_symlink() for p in (job / "app" / "custom").rglob("*.py")), "submit the linked layout"
    with PocDeployment(tmp_path / "deploy", PROSTATE_CLIENTS, env={"DATASET_ROOT": str(demo_prostate)}) as poc:
        fedavg = poc.submit_and_wait(jobs["fedavg_prostate"])
        assert torch.load(fedavg / "app_server" / "best_global_model.pt")["state_dict"]
        fedsm = poc.submit_and_wait(jobs["fedsm_prostate"])
        for client in PROSTATE_CLIENTS:
            assert (fedsm / "app_server" / f"last_personal_{client}_model.pt").is_file()
        assert (fedsm / "tb_events" / "client_MSD").is_dir(), "client metrics are streamed to the server"
