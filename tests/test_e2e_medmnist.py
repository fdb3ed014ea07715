"""End-to-end: jobs/fedavg_medmnist in the NVFlare simulator on BreastMNIST, 4 clients, 2 of them sampled per round."""

import json
from pathlib import Path

import pytest
import torch
from helpers import make_job_variant, run, run_simulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medfl.federations.medmnist.evaluation import TEST_METRICS_FILE
from medfl.federations.medmnist.splits import prepare_client_splits

pytestmark = pytest.mark.e2e

CLIENTS = ("site-1", "site-2", "site-3", "site-4")


@pytest.fixture(scope="module")
def demo_medmnist(tmp_path_factory, shared_data: Path) -> Path:
    """A DATASET_ROOT holding medmnist/breastmnist.npz (a link to the shared sample) and 4 clients' splits."""
    root = tmp_path_factory.mktemp("demo_medmnist")
    (root / "medmnist").mkdir()
    (root / "medmnist" / "breastmnist.npz").symlink_to(shared_data / "medmnist" / "breastmnist.npz")
    prepare_client_splits(root / "medmnist" / "breastmnist.npz", root / "medmnist" / "splits_breastmnist",
                          num_clients=len(CLIENTS), alpha=1000.0, seed=0, dataset="breastmnist")
    return root


def test_fedavg_medmnist_samples_clients_and_tests_on_the_server(tmp_path, demo_medmnist):
    server = {"num_rounds": 2, "fraction_fit": 0.5, "min_fit_clients": 1}
    train = {"dataset": "breastmnist", "data_root": "DATASET_ROOT/medmnist",
             "datalist": "DATASET_ROOT/medmnist/splits_breastmnist", "local_epochs": 1, "num_threads": 1}
    variant = make_job_variant("fedavg_medmnist", tmp_path / "job", server, train)
    workspace = tmp_path / "ws"
    run_simulator(variant, workspace, CLIENTS, demo_medmnist)
    job_dir = workspace / "server" / "simulate_job"
    app_server = job_dir / "app_server"

    history = json.loads((app_server / TEST_METRICS_FILE).read_text())
    assert [h["step"] for h in history] == [0, 1, 2]
    trained = [h["trained_by"] for h in history[1:]]
    assert all(len(t) == 2 for t in trained) and trained[0] != trained[1], trained

    log = (workspace / "server" / "log.txt").read_text()
    assert "server test evaluation at round 0 (initial global model): accuracy=" in log
    for round_number, clients in enumerate(trained, start=1):
        assert f"round {round_number}/2: sampled 2 of 4 clients: {', '.join(clients)}" in log

    server_events = EventAccumulator(str(job_dir / "tb_events" / "server"))
    server_events.Reload()
    assert [e.step for e in server_events.Scalars("test/accuracy")] == [0, 1, 2]
    assert "val_mean/global_loss" in server_events.Tags()["scalars"]
    for client in set(trained[0]) | set(trained[1]):
        assert list((job_dir / "tb_events" / client).glob("events.*")), client

    for kind in ("best", "last"):
        assert torch.load(app_server / f"{kind}_global_model.pt", weights_only=True)["state_dict"], kind
    assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 1
    out = run(["python", "result_stat/medmnist_test_only.py", "--models_dir", app_server,
               "--plot", tmp_path / "test.png"], env={"DATASET_ROOT": str(demo_medmnist)}).stdout
    assert "best global model (sent in round" in out and "server test accuracy per round: 0:" in out, out
    assert (tmp_path / "test.png").is_file()
