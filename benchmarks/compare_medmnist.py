"""MedMNIST federation: FedAvg (NVFlare simulator) against local-only and centralised training with the same CNN,
seed, SGD and budget; writes a test-accuracy table (markdown + CSV) and the validation curves (PNG).

    python benchmarks/compare_medmnist.py [--rounds 2] [--seeds 0 1 2] [--work /tmp/compare_medmnist] \
        [--data <DATASET_ROOT holding medmnist/<set>.npz and medmnist/splits_<set>/>] [--dataset pathmnist]

Without ``--data`` the BreastMNIST sample (``../shared/data/medmnist``) is split over ``--clients`` sites
(Dirichlet alpha 1000, as the job's default preparation: near IID on balanced sets, but on BreastMNIST the
last site gets only the majority class, docs/medmnist.md §2). Every site trains in every round
(``fraction_fit`` 1) so that all methods get the same budget: ``rounds * local_epochs`` epochs with the job's
SGD (a fresh optimizer per round, as the clients do; the baselines keep one), batch size and network. The
clients hold train and validation splits only; the test set is MedMNIST's official one, so each site's column
is the test accuracy of the model that site ends with (FedAvg and centralised: the same global model, selected
on validation; local only: the site's own validation-selected model). The last line is FedAvg's mean test
accuracy minus local-only's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Dict, List

import torch
from baselines import Recipe, SiteData, run_baselines
from results_table import report
from simrun import ROOT, run_job, server_curve
from torch.utils.data import DataLoader

from medfl.common.networks import build_network
from medfl.common.settings import NetworkSpec, OptimizerSpec
from medfl.common.train import build_optimizer
from medfl.federations.medmnist import testing as medmnist_test_only
from medfl.federations.medmnist.data import MedMNISTDataset, medmnist_info
from medfl.federations.medmnist.evaluation import evaluate_classifier
from medfl.federations.medmnist.networks import network_for_data
from medfl.federations.medmnist.splits import load_client_datasets, prepare_client_splits, site_name

# the sample data beside the checkout; MEDFL_SHARED_DATA names it where it lies elsewhere (a worktree), as in the tests
SHARED_DATA = Path(os.environ.get("MEDFL_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEMO_DATASET = "breastmnist"
DEMO_CLIENTS = 3  # the seed's pool_size
DEMO_ALPHA = 1000.0


def demo_medmnist(root: Path, clients: int = DEMO_CLIENTS, shared_data: Path = SHARED_DATA) -> Path:
    """A DATASET_ROOT with ``medmnist/breastmnist.npz`` (a link to the sample) and its client splits."""
    npz = root / "medmnist" / f"{DEMO_DATASET}.npz"
    if not npz.exists():
        npz.parent.mkdir(parents=True)
        npz.symlink_to(shared_data / "medmnist" / f"{DEMO_DATASET}.npz")
        prepare_client_splits(npz, root / "medmnist" / f"splits_{DEMO_DATASET}", num_clients=clients,
                              alpha=DEMO_ALPHA, seed=0, dataset=DEMO_DATASET)
    return root


def accuracy(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
    return evaluate_classifier(model, loader, device)["accuracy"]


def medmnist_recipe(config: Dict, image_size: int, rounds: int, seed: int) -> Recipe:
    network = network_for_data(NetworkSpec(**config["network"]), medmnist_info(config["dataset"]), image_size)
    return Recipe(build_model=lambda: build_network(network.name, **network.args),
                  loss_fn=torch.nn.CrossEntropyLoss(),
                  make_optimizer=lambda model: build_optimizer(model.parameters(), OptimizerSpec(**config["optimizer"])),
                  metric=accuracy, epochs=rounds * int(config["local_epochs"]), batch_size=int(config["batch_size"]),
                  eval_batch_size=int(config["eval_batch_size"]), seed=seed)


def main(argv=None) -> Dict[str, List[Dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="DATASET_ROOT holding medmnist/")
    parser.add_argument("--dataset", default=DEMO_DATASET)
    parser.add_argument("--clients", type=int, default=DEMO_CLIENTS)
    parser.add_argument("--rounds", type=int, default=None, help="default: the job's num_rounds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train", type=json.loads, default={}, help="config_train.json overrides (JSON)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/compare_medmnist"))
    parser.add_argument("--output", type=Path, default=None, help="table and plot folder (default: <work>/results)")
    args = parser.parse_args(argv)
    data = args.data or demo_medmnist(args.work / "data", args.clients)
    output = args.output or args.work / "results"
    job_config = ROOT / "jobs" / "fedavg_medmnist" / "app" / "config"
    workflow = json.loads((job_config / "config_fed_server.json").read_text())["workflows"][0]
    rounds = args.rounds or workflow["args"]["num_rounds"]
    clients = [site_name(i + 1) for i in range(args.clients)]
    paths = {"dataset": args.dataset, "data_root": "DATASET_ROOT/medmnist",
             "datalist": f"DATASET_ROOT/medmnist/splits_{args.dataset}"}
    npz, split_dir = data / "medmnist" / f"{args.dataset}.npz", data / "medmnist" / f"splits_{args.dataset}"

    test_set = MedMNISTDataset.from_npz(npz, "test", args.dataset)
    scores: Dict[str, List[Dict[str, float]]] = {}
    curves, walls = {}, {}
    for seed in args.seeds:
        train = {"num_threads": 1, **paths, **args.train, "seed": seed}
        config = {**json.loads((job_config / "config_train.json").read_text()), **train}
        server = {"num_rounds": rounds, "fraction_fit": 1.0, "min_fit_clients": len(clients)}
        run = run_job("fedavg_medmnist", args.work / f"seed{seed}", clients, data, server, train)
        walls.setdefault("fedavg_medmnist", []).append(run.wall_s)
        with contextlib.redirect_stdout(io.StringIO()):
            tested = medmnist_test_only.test_checkpoints(run.app_server, npz)["best"]["accuracy"]
        scores.setdefault("FedAvg", []).append({client: tested for client in clients})
        sites = {}
        for client in clients:
            train_set, val_set = load_client_datasets(npz, split_dir, client, args.dataset)
            sites[client] = SiteData(train_set, val_set, test_set)
        recipe = medmnist_recipe(config, test_set.image_size, rounds, seed)
        torch.set_num_threads(1)
        run_baselines(sites, recipe, scores, curves, keep_curves=seed == args.seeds[0])
        if seed == args.seeds[0]:
            steps, values = server_curve(run.workspace, "val_mean/global")
            curves["FedAvg"] = ([s * recipe.epochs // rounds for s in steps], values)

    sample = f"{args.dataset} sample, {args.clients} sites, Dirichlet alpha {DEMO_ALPHA:g}"
    where = sample if args.data is None else str(data)
    caption = (f"MedMNIST ({where}), {rounds} rounds x {config['local_epochs']} local epochs, seeds {args.seeds}: "
               f"accuracy on the official test split of the model each site ends with")
    means = report(scores, curves, walls, output, "medmnist", caption, "mean validation accuracy")
    print(f"FedAvg mean test accuracy - local only: {means['FedAvg'] - means['local only']:+.4f}")
    return scores


if __name__ == "__main__":
    main()
