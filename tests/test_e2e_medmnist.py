"""End-to-end, NVFlare simulator on BreastMNIST: the seed job as it is (3 clients, 2 rounds, every client every
round) and the scale-out job with 4 clients, 2 of them sampled per round."""

import json
from pathlib import Path

import pytest
import torch
from helpers import make_job_variant, run, run_simulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medfl.federations.medmnist.evaluation import TEST_METRICS_FILE
from medfl.federations.medmnist.splits import prepare_client_splits

pytestmark = pytest.mark.e2e

SEED_CLIENTS = ("site-1", "site-2", "site-3")
SCALEOUT_CLIENTS = ("site-1", "site-2", "site-3", "site-4")
BREASTMNIST = {"dataset": "breastmnist", "data_root": "DATASET_ROOT/medmnist", "num_threads": 1}


@pytest.fixture(scope="module")
def demo_medmnist(tmp_path_factory, shared_data: Path) -> Path:
    """A DATASET_ROOT holding medmnist/breastmnist.npz (a link to the shared sample) and the splits of 3 and 4
    clients (the preparation's defaults otherwise: alpha 1000, 10 % validation)."""
    root = tmp_path_factory.mktemp("demo_medmnist")
    (root / "medmnist").mkdir()
    npz = root / "medmnist" / "breastmnist.npz"
    npz.symlink_to(shared_data / "medmnist" / "breastmnist.npz")
    for clients in (SEED_CLIENTS, SCALEOUT_CLIENTS):
        prepare_client_splits(npz, root / "medmnist" / f"splits_breastmnist_{len(clients)}", num_clients=len(clients),
                              dataset="breastmnist")
    return root


def _server_outputs(workspace: Path):
    job_dir = workspace / "server" / "simulate_job"
    history = json.loads((job_dir / "app_server" / TEST_METRICS_FILE).read_text())
    events = EventAccumulator(str(job_dir / "tb_events" / "server"))
    events.Reload()
    return job_dir, history, events, (workspace / "server" / "log.txt").read_text()


def test_seed_job_trains_every_client_every_round_and_tests_accuracy_and_auc(tmp_path, demo_medmnist):
    train = {**BREASTMNIST, "datalist": "DATASET_ROOT/medmnist/splits_breastmnist_3"}
    variant = make_job_variant("fedavg_medmnist", tmp_path / "job", {}, train)  # the seed's 2 rounds, 2 epochs
    workspace = tmp_path / "ws"
    run_simulator(variant, workspace, SEED_CLIENTS, demo_medmnist)
    job_dir, history, events, log = _server_outputs(workspace)

    assert [h["step"] for h in history] == [0, 1, 2]
    assert [h["trained_by"] for h in history] == [[], list(SEED_CLIENTS), list(SEED_CLIENTS)]
    assert all(0.0 <= h["accuracy"] <= 1.0 and 0.0 <= h["auc"] <= 1.0 and h["loss"] > 0 for h in history)
    assert "server test evaluation at round 0 (initial global model): accuracy=" in log and ", auc=" in log
    assert ": sampled " not in log, "the seed trains every client in every round"
    assert [e.step for e in events.Scalars("test/auc")] == [0, 1, 2]
    assert {"val_mean/global", "val_mean/global_auc", "val_mean/global_loss"} <= set(events.Tags()["scalars"])
    out = run(["python", "result_stat/medmnist_test_only.py", "--models_dir", job_dir / "app_server"],
              env={"DATASET_ROOT": str(demo_medmnist)}).stdout
    assert "server test AUC per round: 0:" in out and "last global model: accuracy" in out, out


def test_scaleout_job_samples_clients_and_tests_on_the_server(tmp_path, demo_medmnist):
    server = {"num_rounds": 2, "fraction_fit": 0.5, "min_fit_clients": 1}
    train = {**BREASTMNIST, "datalist": "DATASET_ROOT/medmnist/splits_breastmnist_4", "local_epochs": 1}
    variant = make_job_variant("fedavg_medmnist_scaleout", tmp_path / "job", server, train)
    workspace = tmp_path / "ws"
    run_simulator(variant, workspace, SCALEOUT_CLIENTS, demo_medmnist)
    job_dir, history, events, log = _server_outputs(workspace)
    app_server = job_dir / "app_server"

    assert [h["step"] for h in history] == [0, 1, 2]
    trained = [h["trained_by"] for h in history[1:]]
    assert all(len(t) == 2 for t in trained) and trained[0] != trained[1], trained
    assert "server test evaluation at round 0 (initial global model): accuracy=" in log
    for round_number, clients in enumerate(trained, start=1):
        assert f"round {round_number}/2: sampled 2 of 4 clients: {', '.join(clients)}" in log

    assert [e.step for e in events.Scalars("test/accuracy")] == [0, 1, 2]
    assert "val_mean/global_loss" in events.Tags()["scalars"]
    for client in set(trained[0]) | set(trained[1]):
        assert list((job_dir / "tb_events" / client).glob("events.*")), client

    for kind in ("best", "last"):
        state = torch.load(app_server / f"{kind}_global_model.pt", weights_only=True)["state_dict"]
        assert "classifier.0.weight" in state, "the scale-out job trains Flower's LeNet"
    assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 1
    out = run(["python", "result_stat/medmnist_test_only.py", "--models_dir", app_server,
               "--plot", tmp_path / "test.png"], env={"DATASET_ROOT": str(demo_medmnist)}).stdout
    assert "best global model (sent in round" in out and "server test accuracy per round: 0:" in out, out
    assert (tmp_path / "test.png").is_file()
