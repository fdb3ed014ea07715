"""The two MedMNIST jobs' defaults, pinned: ``fedavg_medmnist`` is the seed's code (jopasserat/federated-learning-
tutorial at its README commit e3e8fc5, code of af93944; ALGORITHMS.md §4.0), ``fedavg_medmnist_scaleout`` the
many-client Flower ``simulation_pytorch`` configuration (§4.1/§4.4). A change here must be a decision recorded in
docs/medmnist.md and docs/FIDELITY.md, not a drift."""

import json
from pathlib import Path

from medfl.federations.medmnist.partition import DEFAULT_VAL_RATIO
from medfl.federations.medmnist.preparation import parse_args
from medfl.job_config import check_job

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def _configs(job: str):
    config = JOBS / job / "app" / "config"
    workflow = json.loads((config / "config_fed_server.json").read_text())["workflows"][0]
    train = json.loads((config / "config_train.json").read_text())
    meta = json.loads((JOBS / job / "meta.json").read_text())
    return workflow, train, meta


def test_seed_job_equals_the_seed_code():
    check_job(JOBS / "fedavg_medmnist")
    workflow, train, meta = _configs("fedavg_medmnist")
    server = workflow["args"]
    assert workflow["path"] == "medfl.fedavg.medmnist.MedMNISTFedAvgController"
    # main_fl.py: --num_rounds 2; FedAvg(fraction_fit=1.0, min_fit_clients=2, min_available_clients=pool_size=3)
    assert server["num_rounds"] == 2
    assert server["fraction_fit"] == 1.0 and server["min_fit_clients"] == 2 and meta["min_clients"] == 3
    assert server["weighting"] == "samples"  # FLClient.fit returns len(trainloader.dataset)
    # the MedMNIST getting-started CNN on PathMNIST, on both sides; eval_fn tests in batches of 50
    assert server["network"] == train["network"] == {"name": "medmnist_cnn", "args": {}}
    assert server["dataset"] == train["dataset"] == "pathmnist"
    assert server["eval_batch_size"] == train["eval_batch_size"] == 50
    # FLClient: SGD(lr=0.001, momentum=0.9) (a new one per fit); fit_config: epochs 2, batch_size 128
    assert train["optimizer"] == {"name": "sgd", "lr": 0.001, "momentum": 0.9}
    assert train["local_epochs"] == 2 and train["batch_size"] == 128
    assert train["datalist"] == "DATASET_ROOT/medmnist/splits_pathmnist"


def test_seed_partition_is_the_preparation_default():
    # main_fl.py: do_fl_partitioning(trainset, pool_size=3, alpha=1000, num_classes, val_ratio=0.1)
    args = parse_args(["--npz", "pathmnist.npz", "--out", "splits_pathmnist"])
    assert (args.num_clients, args.alpha, args.val_ratio, args.dataset) == (3, 1000.0, 0.1, "pathmnist")
    assert DEFAULT_VAL_RATIO == 0.1


def test_scaleout_job_is_the_many_client_flower_configuration():
    check_job(JOBS / "fedavg_medmnist_scaleout")
    workflow, train, meta = _configs("fedavg_medmnist_scaleout")
    server = workflow["args"]
    assert workflow["path"] == "medfl.fedavg.medmnist.MedMNISTFedAvgController"
    # simulation_pytorch: FedAvg(fraction_fit=0.1, min_fit_clients=10), 5 rounds, fit_config epochs 5, batch 64
    assert server["fraction_fit"] == 0.1 and server["min_fit_clients"] == 10 and meta["min_clients"] == 10
    assert server["num_rounds"] == 5 and train["local_epochs"] == 5 and train["batch_size"] == 64
    assert server["network"] == train["network"] == {"name": "flower_lenet", "args": {}}
    assert train["optimizer"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9}
    assert server["eval_batch_size"] == train["eval_batch_size"] == 50
    # its own split folder (prepare_medmnist.py --num_clients 100), never the seed job's 3-client one
    assert train["datalist"] == "DATASET_ROOT/medmnist/splits_pathmnist_100"


def test_flower_benchmark_runs_the_seed_job_settings_by_default():
    from bench_flower_vs_nvflare_medmnist import parse_args as bench_args

    cfg, _ = bench_args(["--npz", "pathmnist.npz", "--splits", "splits_pathmnist"])
    workflow, train, _ = _configs("fedavg_medmnist")
    server = workflow["args"]
    assert (cfg.dataset, cfg.network) == (train["dataset"], train["network"]["name"])
    assert (cfg.rounds, cfg.fraction_fit, cfg.min_fit_clients) == (
        server["num_rounds"], server["fraction_fit"], server["min_fit_clients"])
    assert (cfg.local_epochs, cfg.batch_size, cfg.eval_batch_size) == (
        train["local_epochs"], train["batch_size"], train["eval_batch_size"])
    assert {"name": "sgd", "lr": cfg.lr, "momentum": cfg.momentum} == train["optimizer"]
