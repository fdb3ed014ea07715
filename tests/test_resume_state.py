"""A missing, truncated or wrong ``resume_from`` file stops the job before round 0 with the path and the problem
(issue 19, item 8); a good one continues where the run stopped."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fake_transport import attach

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import STATE_FILE
from medfl.common.errors import DataError
from medfl.common.protocol import NUM_TRAIN_SAMPLES, NUM_VAL_SAMPLES, RESUME_ROUND, RUN_ID
from medfl.common.resume import read_server_state
from medfl.fedavg.controller import FedAvgController
from medfl.fedsm.controller import FedSMController

CLIENTS = ("client_a", "client_b")
UNET = {"name": "unet", "args": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}
MODELS = {"global": {"w": np.zeros((2, 3), np.float32), "n": np.array(4)}}


def state(**changes):
    saved = {"completed_round": 1, "num_rounds": 4, "best_scores": {"global": 0.5}, "extra": {},
             "models": {"global": {"w": torch.zeros(2, 3), "n": torch.tensor(4)}}}
    saved.update(changes)
    return saved


def written(tmp_path, content) -> str:
    path = tmp_path / STATE_FILE
    torch.save(content, path)
    return str(path)


@pytest.mark.parametrize("content, problem", [
    (state(num_rounds=3), "written by a run of num_rounds=3, but this job has num_rounds=4; resume with the same "
                          "num_rounds"),
    (state(completed_round=4), "completed_round is 4, not a round of 0..3"),
    (state(completed_round=1.0), "completed_round is 1.0, not a round of 0..3"),
    (state(models={"global": {"w": torch.zeros(2, 3)}}),
     "model 'global' does not fit this job's network: missing array(s) ['n']"),
    (state(models={"global": {"w": torch.zeros(3), "n": torch.tensor(4)}}),
     "model 'global' does not fit this job's network: w has shape (3,) but (2, 3) is expected"),
    (state(models={"global": {"w": torch.full((2, 3), float("nan")), "n": torch.tensor(4)}}),
     "model 'global' does not fit this job's network: w holds 6 non-finite value(s) (NaN or inf) of 6"),
    (state(models={"selector": {}, "global": {}}),
     "holds the models ['global', 'selector'], but this job has ['global']"),
    ({"state_dict": {"w": torch.zeros(2, 3)}, "score": 0.5},
     "not a server state: missing ['completed_round', 'num_rounds', 'models', 'best_scores', 'extra'] (a "
     "server_state.pt of this job is expected, not a model checkpoint)"),
    ([1, 2, 3], "holds a list, not a server state (written by save_state?)"),
    (state(run_id="../../etc", train_rounds={}), "run_id is '../../etc', not 32 hex digits"),
    (state(run_id="0" * 32, train_rounds={"client_a": 2}),
     "train_rounds must map client names to rounds of 0..1, got {'client_a': 2}"),
])
def test_a_wrong_state_is_refused_with_the_path_and_the_problem(tmp_path, content, problem):
    path = written(tmp_path, content)
    with pytest.raises(DataError) as error:
        read_server_state(path, 4, MODELS)
    assert str(error.value) == f"[server] {path}: {problem}"


def test_missing_truncated_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(DataError, match=rf"^\[server\] {tmp_path}/none.pt: state file not found$"):
        read_server_state(str(tmp_path / "none.pt"), 4, MODELS)
    with pytest.raises(DataError, match=rf"^\[server\] {tmp_path}: not a file$"):
        read_server_state(str(tmp_path), 4, MODELS)
    good = written(tmp_path, state())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(good, "rb").read()[:200])
    text = tmp_path / "notes.pt"
    text.write_text("not a torch file")
    for path in (truncated, text):
        with pytest.raises(DataError, match=rf"^\[server\] {path}: not a readable torch state file \(\w+: .+\)$"):
            read_server_state(str(path), 4, MODELS)


def test_a_file_that_needs_unpickling_arbitrary_objects_is_not_loaded(tmp_path):
    path = written(tmp_path, state(extra={"object": FLModel()}))
    with pytest.raises(DataError, match=r"not a readable torch state file \(UnpicklingError: "):
        read_server_state(path, 4, MODELS)


def test_a_good_state_comes_back_as_numpy(tmp_path):
    loaded = read_server_state(written(tmp_path, state()), 4, MODELS)
    assert loaded["completed_round"] == 1 and loaded["best_scores"] == {"global": 0.5}
    assert isinstance(loaded["models"]["global"]["w"], np.ndarray) and loaded["models"]["global"]["n"].shape == ()


# ---------------------------------------------------------------------------------------------- in the controller
def honest(client, task, sent):
    meta = {NUM_VAL_SAMPLES: 4}
    if task == "validate":
        return FLModel(metrics={"global": 0.5}, meta=meta)
    return FLModel(params={k: np.asarray(v + 1, v.dtype) for k, v in sent.params.items()}, metrics={"global": 0.5},
                   current_round=sent.current_round, meta={**meta, NUM_TRAIN_SAMPLES: 10})


def fedavg(tmp_path, name, num_rounds, resume_from=""):
    controller = FedAvgController(num_rounds=num_rounds, resume_from=resume_from, network=UNET, seed=0)
    sent = []

    def answer(client, task, data):
        sent.append((task, data.current_round))
        controller.metas.append((client, task, data.current_round, dict(data.meta)))
        return honest(client, task, data)

    attach(controller, tmp_path / name, CLIENTS, answer, {"network": UNET, "seed": 0})
    controller.sent, controller.metas = sent, []
    controller.run()
    return controller


def test_a_run_resumes_after_the_last_completed_round(tmp_path):
    first = fedavg(tmp_path, "first", 3)
    state_file = first.app_dir / STATE_FILE
    saved = torch.load(state_file, weights_only=True)
    saved["completed_round"] = 0  # as if the server had been killed during round 1
    saved["train_rounds"] = {"client_a": 0}  # and client_b had not trained in round 0
    torch.save(saved, state_file)
    resumed = fedavg(tmp_path, "resumed", 3, str(state_file))
    assert not resumed.log["panic"]
    assert "resumed from " + str(state_file) + ": continuing at round 2/3" in resumed.log["info"]
    assert [r for task, r in resumed.sent if task == "train"] == [1, 1, 2, 2]
    # every task names the run and the round whose client state the client restores
    assert {meta[RUN_ID] for *_, meta in resumed.metas} == {first.run_id} == {resumed.run_id}
    assert {client: meta[RESUME_ROUND] for client, *_, meta in resumed.metas} == {"client_a": 0, "client_b": -1}
    final = torch.load(resumed.app_dir / STATE_FILE, weights_only=True)
    assert final["run_id"] == first.run_id and final["train_rounds"] == {"client_a": 2, "client_b": 2}


def test_a_fresh_run_names_itself_and_no_resume_round(tmp_path):
    first, second = fedavg(tmp_path, "first", 2), fedavg(tmp_path, "second", 2)
    assert re.fullmatch(r"[0-9a-f]{32}", first.run_id) and first.run_id != second.run_id
    assert all(meta == {RUN_ID: first.run_id} for *_, meta in first.metas)


def test_a_state_without_a_run_id_resumes_with_a_warning_that_it_is_not_exact(tmp_path):
    state_file = fedavg(tmp_path, "first", 3).app_dir / STATE_FILE
    saved = torch.load(state_file, weights_only=True)
    del saved["run_id"], saved["train_rounds"]  # as a medfl before exact resume wrote it
    torch.save(saved, state_file)
    resumed = fedavg(tmp_path, "resumed", 3, str(state_file))
    assert not resumed.log["panic"] and any("will not be bit-identical" in w for w in resumed.log["warning"])
    assert all(RESUME_ROUND not in meta for *_, meta in resumed.metas)


def test_a_wrong_resume_file_stops_the_job_before_round_0(tmp_path):
    state_file = fedavg(tmp_path, "first", 3).app_dir / STATE_FILE
    resumed = fedavg(tmp_path, "resumed", 4, str(state_file))
    assert resumed.log["panic"] == [f"resume_from: [server] {state_file}: written by a run of num_rounds=3, but this "
                                    f"job has num_rounds=4; resume with the same num_rounds"]
    assert resumed.sent == [] and not list(resumed.app_dir.glob("*.pt"))
    missing = fedavg(tmp_path, "missing", 3, str(tmp_path / "nowhere.pt"))
    assert missing.log["panic"] == [f"resume_from: [server] {tmp_path}/nowhere.pt: state file not found"]
    assert missing.sent == []


def test_a_state_of_another_method_stops_the_job_naming_what_does_not_fit(tmp_path):
    first = fedavg(tmp_path, "fedavg", 3)
    state_file = first.app_dir / STATE_FILE
    controller = FedSMController(num_rounds=3, resume_from=str(state_file), network=UNET,
                                 selector_network={"name": "selector_cnn", "args": {"num_classes": 2, "channels": [4]}})
    attach(controller, tmp_path / "fedsm", CLIENTS, honest, {
        "network": UNET, "selector_network": {"name": "selector_cnn", "args": {"num_classes": 2, "channels": [4]}}})
    controller.run()
    (panic,) = controller.log["panic"]
    assert re.fullmatch(rf"resume_from: \[server\] {state_file}: holds the models \['global'\], but this job has "
                        r"\['global', 'personal_client_a', 'personal_client_b', 'selector'\]", panic), panic
    saved = torch.load(state_file, weights_only=True)
    saved["models"] = {name: {k: torch.as_tensor(v) for k, v in params.items()}
                       for name, params in controller.models.items()}
    torch.save(saved, state_file)  # the right models, but FedAvg's (empty) extra state
    controller = FedSMController(num_rounds=3, resume_from=str(state_file), network=UNET,
                                 selector_network={"name": "selector_cnn", "args": {"num_classes": 2, "channels": [4]}})
    attach(controller, tmp_path / "fedsm2", CLIENTS, honest, {
        "network": UNET, "selector_network": {"name": "selector_cnn", "args": {"num_classes": 2, "channels": [4]}}})
    controller.run()
    assert controller.log["panic"] == [
        f"resume_from: [server] {state_file}: the method's extra state does not fit this job (KeyError: "
        f"'selector_moments'); was it written by another method?"]
