"""Dermoscopy federation (HAM10000's acquisition sources): PRR-FL and FedAvg (NVFlare simulator) against
local-only and centralised training, with the same slim VGG, seed, SGD schedule and budget; writes a test
macro-F1 table (markdown + CSV) and the validation curves (PNG).

    python benchmarks/compare_dermoscopy.py [--rounds 10] [--seeds 0 1 2] [--work /tmp/compare_dermoscopy] \
        [--data <a DATASET_ROOT holding prrfl_ham10000/, from data_preparation/prepare_ham10000_prrfl.py>]

Without ``--data`` the HAM10000-mini sample (``../shared/data/ham10000_mini``, 4 sources) is prepared at
``--size``. The demo shrinks the network and the images for every method alike (``DEMO_TRAIN``; ``--train``
replaces these overrides, ``--train '{}'`` keeps the jobs' paper settings). The baselines train
``rounds * local_epochs`` epochs with cross-entropy and the jobs' SGD, learning rate halved every
``lr_decay_rounds`` rounds, batch size and augmentation. Test macro-F1 per client, as the original reports
it: PRR-FL's personalised model selected by the server (best), FedAvg's best global model, the baselines'
validation-selected models. FedMAS is not run here: it trains a ResNet with a MoCo prior on Fed-ISIC2019's
eight classes, another model and task. The last line is PRR-FL's mean test macro-F1 minus FedAvg's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Dict, List

import torch
from torch.utils.data import DataLoader

from simrun import ROOT, run_job, server_curve
from baselines import Recipe, SiteData, centralised, local_only
from results_table import report

sys.path.insert(0, str(ROOT / "data_preparation"))
sys.path.insert(0, str(ROOT / "result_stat"))
from prepare_ham10000_prrfl import prepare_federation  # noqa: E402
import prrfl_dermoscopy_results as prrfl_results  # noqa: E402
from medfl.common.controller import checkpoint_name  # noqa: E402
from medfl.common.metrics import macro_f1, predict_probabilities  # noqa: E402
from medfl.common.networks import build_network  # noqa: E402
from medfl.prrfl.dataset import build_client_datasets  # noqa: E402
from medfl.prrfl.executor import round_learning_rate  # noqa: E402

CLIENTS = ("clientA", "clientB", "clientC", "clientD")
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_SIZE = 32
DEMO_ROUNDS = 10
DEMO_TRAIN = {"image_size": DEMO_SIZE, "local_epochs": 2,
              "network": {"name": "medfl.prrfl.networks:vgg16_slim",
                          "args": {"blocks": [[8], [16], [16], [32], [32]], "hidden_features": 32}}}


def demo_dermoscopy(root: Path, size: int = DEMO_SIZE, shared_data: Path = SHARED_DATA) -> Path:
    """A DATASET_ROOT holding ``prrfl_ham10000``, HAM10000-mini prepared at ``size`` (kept if already there)."""
    if not (root / "prrfl_ham10000").is_dir():
        prepare_federation(shared_data / "ham10000_mini", root / "prrfl_ham10000", image_size=size,
                           log=lambda message: None)
    return root


def macro_f1_metric(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
    probabilities, labels = predict_probabilities(model, loader, device)
    return macro_f1(labels, probabilities.argmax(axis=1))


def dermoscopy_recipe(config: Dict, rounds: int, seed: int) -> Recipe:
    """The FedAvg dermoscopy client (``DermoscopyExecutor``) as a plain budget, its per-round SGD schedule per epoch."""
    network, optimizer = config["network"], config["optimizer"]
    epochs_per_round = int(config["local_epochs"])

    def lr_factor(epoch: int) -> float:
        return round_learning_rate(1.0, epoch // epochs_per_round, float(config["lr_decay"]),
                                   int(config["lr_decay_rounds"]))

    return Recipe(build_model=lambda: build_network(network["name"], **network.get("args", {})),
                  loss_fn=torch.nn.CrossEntropyLoss(),
                  make_optimizer=lambda model: torch.optim.SGD(model.parameters(), **optimizer["args"]),
                  make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor),
                  metric=macro_f1_metric, epochs=rounds * epochs_per_round, batch_size=int(config["batch_size"]),
                  seed=seed, drop_last=True)


def dermoscopy_sites(config: Dict, clients: List[str]) -> Dict[str, SiteData]:
    sites = {}
    for client in clients:
        splits = build_client_datasets(config, client)
        sites[client] = SiteData(splits["training"], splits["validation"], splits["testing"])
    return sites


def fl_test_scores(prrfl_ws: Path, fedavg_ws: Path, data_root: Path) -> Dict[str, Dict[str, float]]:
    """``{"PRR-FL": {client: macro-F1}, "FedAvg": {...}}`` with the PRR-FL result script's loaders."""
    fedavg_app = prrfl_results.simulate_job(fedavg_ws, "server") / "app_server"
    fedavg_config = prrfl_results.read_config(fedavg_app)
    fedavg = prrfl_results.load_model(fedavg_app / checkpoint_name("best", "global"), fedavg_config)
    scores = {"PRR-FL": {}, "FedAvg": {}}
    for client, (checkpoint, config) in prrfl_results.personal_models(prrfl_ws, "best").items():
        personal = prrfl_results.load_model(checkpoint, config)
        scores["PRR-FL"][client] = prrfl_results.test_metrics(personal, data_root, client, config)["macro_f1"]
        scores["FedAvg"][client] = prrfl_results.test_metrics(fedavg, data_root, client, fedavg_config)["macro_f1"]
    return scores


def main(argv=None) -> Dict[str, List[Dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="DATASET_ROOT holding prrfl_ham10000/")
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS))
    parser.add_argument("--rounds", type=int, default=DEMO_ROUNDS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--size", type=int, default=DEMO_SIZE, help="image size of the demo preparation")
    parser.add_argument("--train", type=json.loads, default=DEMO_TRAIN, help="config_train.json overrides (JSON)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/compare_dermoscopy"))
    parser.add_argument("--output", type=Path, default=None, help="table and plot folder (default: <work>/results)")
    args = parser.parse_args(argv)
    data = args.data or demo_dermoscopy(args.work / "data", args.size)
    output = args.output or args.work / "results"

    scores: Dict[str, List[Dict[str, float]]] = {}
    curves, walls = {}, {}
    for seed in args.seeds:
        train = {"num_threads": 1, **args.train, "seed": seed}
        config = json.loads((ROOT / "jobs" / "fedavg_dermoscopy" / "app" / "config" / "config_train.json").read_text())
        config = {**config, **train, "data_root": str(data / "prrfl_ham10000")}
        per_epoch = int(config["local_epochs"])
        workspaces = {}
        for method, job in (("PRR-FL", "prrfl_dermoscopy"), ("FedAvg", "fedavg_dermoscopy")):
            run = run_job(job, args.work / f"seed{seed}" / job, args.clients, data, {"num_rounds": args.rounds}, train)
            walls.setdefault(job, []).append(run.wall_s)
            workspaces[method] = run.workspace
        with contextlib.redirect_stdout(io.StringIO()):
            tested = fl_test_scores(workspaces["PRR-FL"], workspaces["FedAvg"], data / "prrfl_ham10000")
        for method, by_client in tested.items():
            scores.setdefault(method, []).append(by_client)
        if seed == args.seeds[0]:  # what each client holds at the start of round r, after r * local_epochs epochs
            for method, tag in (("PRR-FL", "val_mean/personal_macro_f1"), ("FedAvg", "val_mean/global")):
                steps, values = server_curve(workspaces[method], tag)
                curves[method] = ([s * per_epoch for s in steps], values)
        sites = dermoscopy_sites(config, args.clients)
        recipe = dermoscopy_recipe(config, args.rounds, seed)
        torch.set_num_threads(1)
        for method, result in (("local only", local_only(sites, recipe)), ("centralised", centralised(sites, recipe))):
            scores.setdefault(method, []).append(result.test)
            if seed == args.seeds[0]:
                curves[method] = (list(range(1, recipe.epochs + 1)), result.curve)

    where = f"HAM10000-mini demo, {args.size}x{args.size}" if args.data is None else str(data)
    caption = (f"Dermoscopy ({where}), {len(args.clients)} clients, {args.rounds} rounds x {per_epoch} local epochs, "
               f"seeds {args.seeds}: test macro-F1 (PRR-FL: personalised models; others: validation-selected)")
    means = report(scores, curves, walls, output, "dermoscopy", caption, "mean validation macro-F1")
    print(f"PRR-FL mean test macro-F1 - FedAvg: {means['PRR-FL'] - means['FedAvg']:+.4f}")
    return scores


if __name__ == "__main__":
    main()
