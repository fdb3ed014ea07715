"""Resume in a POC deployment: the server is killed after round 2 of 4, restarted, and the job submitted again
with ``resume_from`` continues at round 3 with the models the killed run had saved, and every site with the state it
had saved after round 2; it ends with the final model of an uninterrupted run of the same seed, bit for bit."""

from __future__ import annotations

import re
import time

import pytest
import torch
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN
from helpers import POC_SERVER, PocDeployment, make_job_variant
from test_deploy_faults import TINY_UNET, kill_processes_of, submit, wait_for_text

pytestmark = pytest.mark.deploy

ROUNDS = 4
LOCAL_EPOCHS = 20  # long enough that round 3 is still training when the server is killed


def validations(log: str) -> dict:
    return dict(re.findall(r"round (\d+) validation of received models: (.*)", log))


def final_global_model(workspace) -> dict:
    return torch.load(workspace / "app_server" / "server_state.pt", weights_only=True)["models"]["global"]


def test_server_killed_after_round_two_resumes_at_round_three(tmp_path, demo_prostate):
    train = {"num_threads": 1, "network": TINY_UNET, "local_epochs": LOCAL_EPOCHS, **PROSTATE_TRAIN}
    first = make_job_variant("fedavg_prostate", tmp_path / "first", {"num_rounds": ROUNDS}, train)
    with PocDeployment(tmp_path / "deploy", PROSTATE_CLIENTS, env={"DATASET_ROOT": str(demo_prostate)}) as poc:
        kits = poc.kits
        job_id = submit(poc, first)
        # every client has validated what round 3 sent (the models after round 2) and is training: kill the server
        for client in PROSTATE_CLIENTS:
            wait_for_text(kits / client / job_id / "log.txt", "round 2 validation of received models")
        kill_processes_of(kits / POC_SERVER)
        state_file = kits / POC_SERVER / job_id / "app_server" / "server_state.pt"
        saved = torch.load(state_file, weights_only=True)
        assert saved["completed_round"] == 1, "killed during round 3"
        time.sleep(2)
        poc.nvflare("poc", "start", "-p", POC_SERVER)

        resumed = make_job_variant("fedavg_prostate", tmp_path / "resumed",
                                   {"num_rounds": ROUNDS, "resume_from": str(state_file)}, train)
        workspace = poc.submit_and_wait(resumed)
        uninterrupted = make_job_variant("fedavg_prostate", tmp_path / "uninterrupted", {"num_rounds": ROUNDS}, train)
        expected = final_global_model(poc.submit_and_wait(uninterrupted))
    resumed_id = workspace.parent.name
    server_log = (workspace / "log.txt").read_text()
    assert f"continuing at round 3/{ROUNDS}" in server_log
    assert f"round 1/{ROUNDS} started" not in server_log, "a resumed run must not start from zero"
    final = torch.load(workspace / "app_server" / "server_state.pt", weights_only=True)
    assert final["completed_round"] == ROUNDS - 1
    # the models the killed run saved after round 2 are the ones the resumed run sends in round 3
    for client in PROSTATE_CLIENTS:
        before = validations((kits / client / job_id / "log.txt").read_text())
        resumed_log = (kits / client / resumed_id / "log.txt").read_text()
        after = validations(resumed_log)
        assert list(after)[0] == "2" and after["2"] == before["2"], (client, before, after)
        # and each site continues from the state it saved after round 2, in its workspace's medfl_state (the default)
        assert f"resumed run {saved['run_id']}: restored the state saved after round 1" in resumed_log, client
        assert (kits / client / "medfl_state" / saved["run_id"] / client / f"round_{ROUNDS - 1}.pt").is_file()
    got = final_global_model(workspace)
    assert sorted(got) == sorted(expected)
    different = [k for k, v in expected.items() if not torch.equal(v, got[k])]
    assert not different, (f"the resumed run's final model differs from the uninterrupted run's in {len(different)} "
                           f"of {len(expected)} arrays, e.g. {different[:3]}")
