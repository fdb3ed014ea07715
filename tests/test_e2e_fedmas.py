"""End-to-end: FedMAS and BSM-FL on the HAM10000-mini demo federation in the simulator (2 rounds), then the
results table. ``fedavg_isic2019`` is BSM-FL's job with ``loss: ce`` (pinned in ``test_original_settings.py``); it
runs in the POC tests (``test_deploy_poc.py``)."""

import json

import pytest
import torch
from helpers import make_job_variant, run, run_simulator

from medfl.common.protocol import NUM_TRAIN_STEPS
from medfl.common.resnet import resnet_trunk
from medfl.fedmas.aggregation import mas_weights, sample_weights

pytestmark = pytest.mark.e2e

CLIENTS = ("center_1", "center_2", "center_3", "center_5")  # FLamby centres of HAM10000's four sources
PRIOR = "pretrained/moco_r18.pth.tar"
TRUNK = "pretrained/resnet18.pth"
SMALL = {"num_threads": 1, "image_size": 32, "batch_size": 16}  # the paper's 224 px / batch 64 are too slow here
RESULTS_OPTIONS = {"fedmas_isic2019": ("--fedmas", "FedMAS"), "fedavg_bsm_isic2019": ("--bsm_fl", "BSM-FL")}


@pytest.fixture(scope="module")
def dataset_root(shared_data, tmp_path_factory):
    """DATASET_ROOT of the demo: the federation at 32 px, the demo prior (pretrain_moco.py, seconds) and a
    torchvision-layout trunk file standing in for the ImageNet weights."""
    root = tmp_path_factory.mktemp("fedmas_demo")
    ham = shared_data / "ham10000_mini"
    run(["python", "data_preparation/prepare_isic2019.py", "demo", "--ham-dir", ham,
         "--out", root / "fed_isic2019", "--image-size", "32"])
    run(["python", "data_preparation/pretrain_moco.py", "--images", ham / "images", "--output", root / PRIOR,
         "--depth", "18", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--queue-size", "256",
         "--bn-splits", "2", "--max-images", "64"])
    torch.save(resnet_trunk(18).state_dict(), root / TRUNK)
    return root


@pytest.fixture(scope="module")
def run_job(dataset_root, tmp_path_factory):
    """``run_job(job)`` -> the server's app folder after a 2-round simulator run (each job runs once)."""
    done = {}

    def run_once(job):
        if job not in done:
            train = dict(SMALL)
            if job == "fedmas_isic2019":
                train.update(prior_checkpoint=f"DATASET_ROOT/{PRIOR}", network={
                    "name": "free_head_resnet", "args": {"n_classes": 8, "prior_dim": 512, "depth": 18}})
            tmp = tmp_path_factory.mktemp(job)
            server = {"num_rounds": 2, "trunk_checkpoint": f"DATASET_ROOT/{TRUNK}"}
            variant = make_job_variant(job, tmp / "job", server, train)
            run_simulator(variant, tmp / "ws", CLIENTS, dataset_root)
            done[job] = tmp / "ws"
        return done[job]

    return run_once


def app_server(workspace):
    return workspace / "server" / "simulate_job" / "app_server"


def check_common_outputs(workspace):
    """Checkpoints, resumable state, per-round pooled balanced accuracy, client TensorBoard streams."""
    server = app_server(workspace)
    for name in ("best_global_model.pt", "last_global_model.pt", "best_test_selected_global_model.pt"):
        assert torch.load(server / name, weights_only=True)["state_dict"], name
    assert torch.load(server / "server_state.pt", weights_only=True)["completed_round"] == 1
    history = json.loads((server / "balanced_accuracy.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]  # 2 training rounds + the final validation
    for record in history["rounds"]:
        assert set(record["clients"]) == set(CLIENTS)
        assert 0 <= record["pooled"]["testing"] <= 1 and 0 <= record["pooled"]["validation"] <= 1
    assert set(history["selected"]) == {"validation_selected", "last", "test_selected"}
    for client in CLIENTS:
        assert list((workspace / "server" / "simulate_job" / "tb_events" / client).glob("events.*")), client
    log = (workspace / "server" / "log.txt").read_text()
    assert "selected on the TEST split as the original does (optimistic)" in log
    return history


def test_fedmas_isic2019(run_job):
    history = check_common_outputs(run_job("fedmas_isic2019"))
    assert history["aggregation"] == "mas"
    for record in history["rounds"][:2]:
        clients = sorted(record["aggregation"])
        factors = [record["aggregation"][c]["robust_factor"] for c in clients]
        weights = [record["aggregation"][c]["weight"] for c in clients]
        assert weights == pytest.approx(mas_weights(factors))


def test_bsm_fl_baseline(run_job):
    history = check_common_outputs(run_job("fedavg_bsm_isic2019"))
    assert history["aggregation"] == "ISIC2019FedAvgController"
    record = history["rounds"][0]["aggregation"]
    clients = sorted(record)
    assert all("robust_factor" not in record[c] for c in clients)
    steps = [record[c][NUM_TRAIN_STEPS] for c in clients]
    assert all(s > 0 for s in steps)
    assert [record[c]["weight"] for c in clients] == pytest.approx(sample_weights(steps))


def test_results_table(run_job):
    args = [arg for job, (option, _) in RESULTS_OPTIONS.items() for arg in (option, run_job(job))]
    out = run(["python", "result_stat/fedmas_results.py", *args]).stdout
    assert out.count("pooled") == 3 and "model selected on the TEST split" in out
    for _, label in RESULTS_OPTIONS.values():
        assert out.count(f"\n{label} ") == 3, out
