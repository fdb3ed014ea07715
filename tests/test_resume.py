"""Resume: a stopped run restarts from its last completed round with the same models, not from zero."""

import re

import pytest
import torch
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN
from helpers import as_longer_run, make_job_variant, run_simulator

pytestmark = pytest.mark.e2e


def _validations(workspace, client):
    text = (workspace / client / "log.txt").read_text()
    return dict(re.findall(r"round (\d+) validation of received models: (.*)", text))


def test_fedavg_resumes_after_round_two(tmp_path, demo_prostate):
    first = make_job_variant("fedavg_prostate", tmp_path / "first", {"num_rounds": 2},
                             {"num_threads": 1, **PROSTATE_TRAIN})
    run_simulator(first, tmp_path / "ws1", PROSTATE_CLIENTS, demo_prostate)
    state_file = tmp_path / "ws1" / "server" / "simulate_job" / "app_server" / "server_state.pt"
    saved = torch.load(state_file, weights_only=True)
    assert saved["completed_round"] == 1
    as_longer_run(state_file, 3)  # a 3-round run stopped after its second round

    resumed = make_job_variant("fedavg_prostate", tmp_path / "resumed",
                               {"num_rounds": 3, "resume_from": str(state_file)}, {"num_threads": 1, **PROSTATE_TRAIN})
    result = run_simulator(resumed, tmp_path / "ws2", PROSTATE_CLIENTS, demo_prostate)
    server_log = (tmp_path / "ws2" / "server" / "log.txt").read_text()
    assert "continuing at round 3/3" in server_log, result.stdout[-2000:]
    assert "round 1/3 started" not in server_log, "a resumed run must not start from zero"
    for client in PROSTATE_CLIENTS:
        before, after = _validations(tmp_path / "ws1", client), _validations(tmp_path / "ws2", client)
        assert list(after) == ["2", "3"], after
        # the models the first run validated after its last round are exactly the ones the resumed run starts from
        assert after["2"] == before["2"], (client, before, after)
    final = torch.load(tmp_path / "ws2" / "server" / "simulate_job" / "app_server" / "server_state.pt",
                       weights_only=True)
    assert final["completed_round"] == 2
