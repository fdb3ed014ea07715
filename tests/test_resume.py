"""Resume: a stopped run restarts from its last completed round and ends with the model an uninterrupted run of the
same seed ends with, bit for bit (the clients restore their optimizers and random states)."""

import re

import pytest
import torch
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN
from helpers import as_longer_run, make_job_variant, run_simulator

pytestmark = pytest.mark.e2e


def _validations(workspace, client):
    text = (workspace / client / "log.txt").read_text()
    return dict(re.findall(r"round (\d+) validation of received models: (.*)", text))


def final_models(workspace):
    return torch.load(workspace / "server" / "simulate_job" / "app_server" / "server_state.pt", weights_only=True)


def test_fedavg_resumes_after_round_two_exactly(tmp_path, demo_prostate):
    # the clients' state lives outside the simulator's workspace, which the simulator empties at start
    train = {"num_threads": 1, "augment": True, "state_dir": str(tmp_path / "client_state"), **PROSTATE_TRAIN}
    first = make_job_variant("fedavg_prostate", tmp_path / "first", {"num_rounds": 2}, train)
    run_simulator(first, tmp_path / "ws1", PROSTATE_CLIENTS, demo_prostate)
    state_file = tmp_path / "ws1" / "server" / "simulate_job" / "app_server" / "server_state.pt"
    saved = torch.load(state_file, weights_only=True)
    assert saved["completed_round"] == 1
    as_longer_run(state_file, 3)  # a 3-round run stopped after its second round
    for client in PROSTATE_CLIENTS:  # each client kept the state after its last two rounds
        folder = tmp_path / "client_state" / saved["run_id"] / client
        assert sorted(p.name for p in folder.iterdir()) == ["round_0.pt", "round_1.pt"]

    resumed = make_job_variant("fedavg_prostate", tmp_path / "resumed",
                               {"num_rounds": 3, "resume_from": str(state_file)}, train)
    result = run_simulator(resumed, tmp_path / "ws2", PROSTATE_CLIENTS, demo_prostate)
    server_log = (tmp_path / "ws2" / "server" / "log.txt").read_text()
    assert "continuing at round 3/3" in server_log, result.stdout[-2000:]
    assert "round 1/3 started" not in server_log, "a resumed run must not start from zero"
    for client in PROSTATE_CLIENTS:
        before, after = _validations(tmp_path / "ws1", client), _validations(tmp_path / "ws2", client)
        assert list(after) == ["2", "3"], after
        # the models the first run validated after its last round are exactly the ones the resumed run starts from
        assert after["2"] == before["2"], (client, before, after)
        assert "restored the state saved after round 1" in (tmp_path / "ws2" / client / "log.txt").read_text()
    final = final_models(tmp_path / "ws2")
    assert final["completed_round"] == 2 and final["run_id"] == saved["run_id"]

    # the same seed without the interruption: the same final model, bit for bit
    uninterrupted = make_job_variant("fedavg_prostate", tmp_path / "uninterrupted", {"num_rounds": 3},
                                     {**train, "state_dir": str(tmp_path / "uninterrupted_state")})
    run_simulator(uninterrupted, tmp_path / "ws3", PROSTATE_CLIENTS, demo_prostate)
    expected = final_models(tmp_path / "ws3")["models"]["global"]
    assert sorted(final["models"]["global"]) == sorted(expected)
    different = [k for k, v in expected.items() if not torch.equal(v, final["models"]["global"][k])]
    assert not different, (f"the resumed run's final model differs from the uninterrupted run's in {len(different)} "
                           f"of {len(expected)} arrays, e.g. {different[:3]}")
