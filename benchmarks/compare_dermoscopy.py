"""Dermoscopy federation (HAM10000's acquisition sources): PRR-FL, FedMAS, BSM-FL and FedAvg (NVFlare simulator)
against local-only and centralised training, with the same slim VGG, seed, SGD schedule and budget; writes a test
macro-F1 table and a test balanced-accuracy table (FedMAS's metric; markdown + CSV each) and the validation curves
(PNG).

    python benchmarks/compare_dermoscopy.py [--rounds 10] [--seeds 0 1 2] [--work /tmp/compare_dermoscopy] \
        [--prior-epochs 5] [--data <a DATASET_ROOT holding prrfl_ham10000/, from prepare_ham10000_prrfl.py>] \
        [--ablations]

Without ``--data`` the HAM10000-mini sample (``../shared/data/ham10000_mini``, 4 sources) is prepared at
``--size``. The demo shrinks the network and the images for every method alike (``DEMO_TRAIN``; ``--train``
replaces these overrides, ``--train '{}'`` keeps the jobs' paper settings). The baselines train
``rounds * local_epochs`` epochs with cross-entropy and the jobs' SGD, learning rate halved every
``lr_decay_rounds`` rounds, batch size and augmentation. Test macro-F1 per client, as the original reports
it, and balanced accuracy, of the same models: PRR-FL's personalised model selected by the server (best), FedAvg's,
BSM-FL's and FedMAS's best global models, the baselines' validation-selected models (all selected on validation
macro-F1).

BSM-FL is FedMAS's baseline: ``jobs/fedavg_dermoscopy`` with ``"loss": "bsm"`` (Balanced Softmax over each
client's training class counts), in its own work folder.

FedMAS (``jobs/fedmas_dermoscopy``) trains the same slim VGG with FedMAS's projector head (its ``fc1`` features
-> prior space), Balanced Softmax and MAS aggregation, with the same SGD schedule, and its best global model is
selected on the clients' mean validation macro-F1, as FedAvg's. Its frozen prior is a MoCo-v2 ResNet-18
pre-trained by ``data_preparation/pretrain_moco.py`` on the federation's pooled training images at the training
image size for ``--prior-epochs`` epochs (made once per ``--work`` folder and reused): the original uses a public
MoCo-v2 ResNet-50 pre-trained on ImageNet for 800 epochs, which the demo has no access to (on the demo, 5 epochs
leave the MoCo loss at its chance level: see docs/RESULTS.md). No labels reach the prior, but its images are the
clients' pooled, which a real federation would not share.

``--ablations`` adds, per seed, the ablations of issue 18 as rows of their own (each job in its own work folder, with
the same network, seed and budget): "PRR-FL (mean aggregation)" (the server's ``"aggregation": "mean"``: the
deputies' plain mean instead of PFA, BatchNorm still local), "PRR-FL (no DET)" (the clients' ``"transfer": "none"``:
the personalised model is the deputy trained alone with cross-entropy) and "FedMAS (sample weights)" (the server's
``"aggregation": "avg"``, FedMAS's own baseline without MAS: alpha_k = n_k / sum n_j); BSM only is the BSM-FL row.
Three more simulator runs per seed; before the last four lines, one line per ablation gives its mean test macro-F1
and balanced accuracy minus those of the method it ablates.

The last four lines are BSM-FL's mean test macro-F1 minus FedAvg's, FedMAS's mean test balanced accuracy minus
BSM-FL's (FedMAS's own comparison), and FedMAS's and PRR-FL's mean test macro-F1 minus FedAvg's; the last one is
PRR-FL's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Dict, List, Mapping, NamedTuple, Tuple

import numpy as np
import torch
from baselines import MetricFn, Recipe, SiteData, run_baselines
from results_table import method_means, report
from simrun import ROOT, run_job, server_curve
from torch.utils.data import DataLoader

from medfl.common.controller import checkpoint_name
from medfl.common.metrics import balanced_accuracy, macro_f1, predict_probabilities
from medfl.common.networks import build_network
from medfl.common.resnet import trunk_features
from medfl.common.settings import OptimizerSpec
from medfl.common.train import build_optimizer
from medfl.federations.dermoscopy.client import DermoscopyFedAvgSettings, round_learning_rate
from medfl.federations.dermoscopy.data import build_client_datasets, split_csv_path
from medfl.federations.dermoscopy.preparation import prepare_federation
from medfl.fedmas import pretrain as pretrain_moco
from medfl.prrfl import results as prrfl_results

CLIENTS = ("clientA", "clientB", "clientC", "clientD")
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_SIZE = 32
DEMO_ROUNDS = 10
DEMO_TRAIN = {"image_size": DEMO_SIZE, "local_epochs": 2,
              "network": {"name": "medfl.federations.dermoscopy.networks:vgg16_slim",
                          "args": {"blocks": [[8], [16], [16], [32], [32]], "hidden_features": 32}}}
PRRFL_JOB, FEDMAS_JOB, FEDAVG_JOB = "prrfl_dermoscopy", "fedmas_dermoscopy", "fedavg_dermoscopy"
NO_OVERRIDES: Mapping[str, object] = MappingProxyType({})


class FLJob(NamedTuple):
    """One federated row of the tables: ``method`` is ``jobs/<job>`` run in ``<work>/seed<s>/<folder>`` with the
    workflow arguments ``server`` and the ``config_train.json`` keys ``train`` on top of the comparison's; an
    ablation (``ablation_of``: the method it ablates) runs only with ``--ablations``."""

    method: str
    job: str
    folder: str
    server: Mapping[str, object] = NO_OVERRIDES
    train: Mapping[str, object] = NO_OVERRIDES
    ablation_of: str = ""


# the table's federated rows in order; the FedMAS job's network is the comparison's VGG with FedMAS's projector head
FL_JOBS = (
    FLJob("PRR-FL", PRRFL_JOB, "prrfl_dermoscopy"),
    FLJob("PRR-FL (mean aggregation)", PRRFL_JOB, "prrfl_mean_dermoscopy", server={"aggregation": "mean"},
          ablation_of="PRR-FL"),
    FLJob("PRR-FL (no DET)", PRRFL_JOB, "prrfl_no_det_dermoscopy", train={"transfer": "none"}, ablation_of="PRR-FL"),
    FLJob("FedMAS", FEDMAS_JOB, "fedmas_dermoscopy"),
    FLJob("FedMAS (sample weights)", FEDMAS_JOB, "fedmas_avg_dermoscopy", server={"aggregation": "avg"},
          ablation_of="FedMAS"),
    FLJob("BSM-FL", FEDAVG_JOB, "bsm_fl_dermoscopy", train={"loss": "bsm"}),  # the FedAvg client, Balanced Softmax
    FLJob("FedAvg", FEDAVG_JOB, "fedavg_dermoscopy"),
)
# the tables, {test metric: its name}: macro-F1 (<work>/results/dermoscopy_results.*, the original's metric, which
# selects every model) and balanced accuracy (dermoscopy_balanced_accuracy_results.*, FedMAS's)
METRICS = {"macro_f1": "macro-F1", "balanced_accuracy": "balanced accuracy"}
VGG_NETWORK = "vgg16_slim"
FEDMAS_NETWORK = "medfl.fedmas.dermoscopy:free_head_vgg16_slim"
# the demo prior: a MoCo-v2 ResNet-18 (pretrain_moco.py with small-data settings), trained once per work folder
PRIOR_DEPTH = 18
PRIOR_EPOCHS = 5
PRIOR_BATCH_SIZE = 32
PRIOR_QUEUE_SIZE = 256
PRIOR_BN_SPLITS = 4
PRIOR_SEED = 0


def demo_dermoscopy(root: Path, size: int = DEMO_SIZE, shared_data: Path = SHARED_DATA) -> Path:
    """A DATASET_ROOT holding ``prrfl_ham10000``, HAM10000-mini prepared at ``size`` (kept if already there)."""
    if not (root / "prrfl_ham10000").is_dir():
        prepare_federation(shared_data / "ham10000_mini", root / "prrfl_ham10000", image_size=size,
                           log=lambda message: None)
    return root


def label_metric(score: Callable[[np.ndarray, np.ndarray], float]) -> MetricFn:
    """The baselines' metric ``score(labels, arg-max predictions)`` of a model on a loader."""

    def metric(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
        probabilities, labels = predict_probabilities(model, loader, device)
        return score(labels, probabilities.argmax(axis=1))

    return metric


def dermoscopy_recipe(config: Dict, rounds: int, seed: int) -> Recipe:
    """The FedAvg dermoscopy client (``DermoscopyExecutor``) as a plain budget, its per-round SGD schedule per epoch."""
    network, optimizer = config["network"], config["optimizer"]
    epochs_per_round = int(config["local_epochs"])

    def lr_factor(epoch: int) -> float:
        return round_learning_rate(1.0, epoch // epochs_per_round, float(config["lr_decay"]),
                                   int(config["lr_decay_rounds"]))

    return Recipe(build_model=lambda: build_network(network["name"], **network.get("args", {})),
                  loss_fn=torch.nn.CrossEntropyLoss(),
                  make_optimizer=lambda model: build_optimizer(model.parameters(), OptimizerSpec(**optimizer)),
                  make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor),
                  metric=label_metric(macro_f1), epochs=rounds * epochs_per_round,
                  batch_size=int(config["batch_size"]), seed=seed, drop_last=True,
                  test_metrics={"balanced_accuracy": label_metric(balanced_accuracy)})


def dermoscopy_sites(config: Dict, clients: List[str]) -> Dict[str, SiteData]:
    sites = {}
    for client in clients:
        splits = build_client_datasets(DermoscopyFedAvgSettings.load(config, "config_train.json", client), client)
        sites[client] = SiteData(splits["training"], splits["validation"], splits["testing"])
    return sites


def demo_prior(work: Path, data_root: Path, clients: List[str], image_size: int, epochs: int) -> Path:
    """The FedMAS prior of the comparison: ``pretrain_moco.py`` on the clients' pooled training images (their
    ``train_<client>.csv``), kept at ``<work>/prior/`` and reused while it holds all ``epochs`` epochs."""
    prior = work / "prior" / f"moco_r{PRIOR_DEPTH}_{image_size}px_{epochs}ep.pth.tar"
    if prior.is_file() and torch.load(prior, map_location="cpu", weights_only=True)["epoch"] == epochs:
        return prior
    datalists = [str(split_csv_path(data_root, client, "train")) for client in clients]
    pretrain_moco.main(["--images", str(data_root), "--datalists", *datalists, "--output", str(prior),
                        "--depth", str(PRIOR_DEPTH), "--image-size", str(image_size), "--epochs", str(epochs),
                        "--batch-size", str(PRIOR_BATCH_SIZE), "--queue-size", str(PRIOR_QUEUE_SIZE),
                        "--bn-splits", str(PRIOR_BN_SPLITS), "--seed", str(PRIOR_SEED)])
    return prior


def fedmas_train(train: Dict, prior: Path) -> Dict:
    """``config_train.json`` overrides of the FedMAS job: ``train``'s, its slim VGG with the projector head to the
    prior's feature width, and the prior."""
    overrides = {**train, "prior_checkpoint": str(prior)}
    if "network" in train:
        network = train["network"]
        if not network["name"].endswith(VGG_NETWORK):
            raise ValueError(f"--train: the comparison's network must be a {VGG_NETWORK} (FedMAS adds its projector "
                             f"head to it), got {network['name']!r}")
        args = {**network.get("args", {}), "prior_dim": trunk_features(PRIOR_DEPTH)}
        overrides["network"] = {"name": FEDMAS_NETWORK, "args": args}
    return overrides


def fl_jobs(ablations: bool) -> List[FLJob]:
    """The rows of :data:`FL_JOBS` to run: the methods, and their ablations with ``ablations``."""
    return [fl for fl in FL_JOBS if ablations or not fl.ablation_of]


def job_overrides(fl: FLJob, rounds: int, train: Dict, prior: Path) -> Tuple[Dict, Dict]:
    """``(server, train)`` overrides of a row's job variant: the comparison's rounds and ``train`` (FedMAS's with
    :func:`fedmas_train`), then the row's own."""
    job_train = fedmas_train(train, prior) if fl.job == FEDMAS_JOB else train
    return {"num_rounds": rounds, **fl.server}, {**job_train, **fl.train}


def global_model_scores(workspace: Path, data_root: Path, clients: List[str]) -> Dict[str, Dict[str, float]]:
    """``{client: test metrics}`` of a job's validation-selected global model (``best_global_model.pt``)."""
    app = prrfl_results.simulate_job(workspace, "server") / "app_server"
    config = prrfl_results.read_config(app)
    model = prrfl_results.load_model(app / checkpoint_name("best", "global"), config)
    return {client: prrfl_results.test_metrics(model, data_root, client, config) for client in clients}


def personal_model_scores(workspace: Path, data_root: Path) -> Dict[str, Dict[str, float]]:
    """``{client: test metrics}`` of each PRR-FL client's selected personalised model."""
    scores = {}
    for client, (checkpoint, config) in prrfl_results.personal_models(workspace, "best").items():
        model = prrfl_results.load_model(checkpoint, config)
        scores[client] = prrfl_results.test_metrics(model, data_root, client, config)
    return scores


def main(argv=None) -> Dict[str, Dict[str, List[Dict[str, float]]]]:
    """``{metric: {method: [{client: test score} per seed]}}`` for each of :data:`METRICS`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="DATASET_ROOT holding prrfl_ham10000/")
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS))
    parser.add_argument("--rounds", type=int, default=DEMO_ROUNDS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--size", type=int, default=DEMO_SIZE, help="image size of the demo preparation")
    parser.add_argument("--train", type=json.loads, default=DEMO_TRAIN, help="config_train.json overrides (JSON)")
    parser.add_argument("--prior-epochs", type=int, default=PRIOR_EPOCHS, help="MoCo-v2 epochs of the FedMAS prior")
    parser.add_argument("--work", type=Path, default=Path("/tmp/compare_dermoscopy"))
    parser.add_argument("--output", type=Path, default=None, help="table and plot folder (default: <work>/results)")
    parser.add_argument("--ablations", action="store_true", help=(
        "also run the ablations: PRR-FL with the deputies' mean instead of PFA, PRR-FL without DET, FedMAS with "
        "sample weights instead of MAS"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the prior and the baselines, as the jobs' num_threads: far faster on shared cores
    data = args.data or demo_dermoscopy(args.work / "data", args.size)
    output = args.output or args.work / "results"

    scores: Dict[str, Dict[str, List[Dict[str, float]]]] = {metric: {} for metric in METRICS}
    curves, walls = {}, {}
    for seed in args.seeds:
        train = {"num_threads": 1, **args.train, "seed": seed}
        config = json.loads((ROOT / "jobs" / "fedavg_dermoscopy" / "app" / "config" / "config_train.json").read_text())
        config = {**config, **train, "data_root": str(data / "prrfl_ham10000")}
        per_epoch = int(config["local_epochs"])
        prior = demo_prior(args.work, data / "prrfl_ham10000", args.clients, int(config["image_size"]),
                           args.prior_epochs)
        for fl in fl_jobs(args.ablations):
            server, job_train = job_overrides(fl, args.rounds, train, prior)
            run = run_job(fl.job, args.work / f"seed{seed}" / fl.folder, args.clients, data, server, job_train)
            walls.setdefault(fl.folder, []).append(run.wall_s)
            with contextlib.redirect_stdout(io.StringIO()):
                if fl.job == PRRFL_JOB:
                    tested = personal_model_scores(run.workspace, data / "prrfl_ham10000")
                else:
                    tested = global_model_scores(run.workspace, data / "prrfl_ham10000", args.clients)
            for metric, table in scores.items():
                table.setdefault(fl.method, []).append({client: values[metric] for client, values in tested.items()})
            if seed == args.seeds[0]:  # what each client holds at the start of round r, after r * local_epochs epochs
                tag = "val_mean/personal_macro_f1" if fl.job == PRRFL_JOB else "val_mean/global"
                steps, values = server_curve(run.workspace, tag)
                curves[fl.method] = ([s * per_epoch for s in steps], values)
        sites = dermoscopy_sites(config, args.clients)
        recipe = dermoscopy_recipe(config, args.rounds, seed)
        run_baselines(sites, recipe, scores["macro_f1"], curves, keep_curves=seed == args.seeds[0],
                      more_scores={"balanced_accuracy": scores["balanced_accuracy"]})

    where = f"HAM10000-mini demo, {args.size}x{args.size}" if args.data is None else str(data)

    def caption(metric: str) -> str:
        return (f"Dermoscopy ({where}), {len(args.clients)} clients, {args.rounds} rounds x {per_epoch} local "
                f"epochs, seeds {args.seeds}: test {METRICS[metric]} (PRR-FL: personalised models; others: "
                f"validation-selected); FedMAS prior: MoCo-v2 ResNet-{PRIOR_DEPTH}, {args.prior_epochs} epochs on the "
                f"pooled training images")

    more = {"balanced_accuracy": (caption("balanced_accuracy"), scores["balanced_accuracy"])}
    f1 = report(scores["macro_f1"], curves, walls, output, "dermoscopy", caption("macro_f1"),
                "mean validation macro-F1", more)
    accuracy = method_means(scores["balanced_accuracy"])
    for fl in fl_jobs(args.ablations):
        if fl.ablation_of:
            print(f"{fl.method} - {fl.ablation_of}: mean test macro-F1 {f1[fl.method] - f1[fl.ablation_of]:+.4f}, "
                  f"balanced accuracy {accuracy[fl.method] - accuracy[fl.ablation_of]:+.4f}")
    print(f"BSM-FL mean test macro-F1 - FedAvg: {f1['BSM-FL'] - f1['FedAvg']:+.4f}")
    print(f"FedMAS mean test balanced accuracy - BSM-FL: {accuracy['FedMAS'] - accuracy['BSM-FL']:+.4f}")
    print(f"FedMAS mean test macro-F1 - FedAvg: {f1['FedMAS'] - f1['FedAvg']:+.4f}")
    print(f"PRR-FL mean test macro-F1 - FedAvg: {f1['PRR-FL'] - f1['FedAvg']:+.4f}")
    return scores


if __name__ == "__main__":
    main()
