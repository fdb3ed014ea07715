"""Why does FedAvg's global model predict the majority class on the real HAM10000 dermoscopy federation?

    python benchmarks/diagnose_fedavg_dermoscopy.py --data /tmp/derm/data [--rounds 3] [--seed 0] \
        [--weighting equal] [--centralised-epochs 6] [--output diagnosis.json] [--clients ...] [--train JSON]

Runs FedAvg in-process on ``<data>/prrfl_ham10000`` with the project's own code, as ``compare_dermoscopy.py`` runs
it: each client is a ``DermoscopyExecutor`` (``jobs/fedavg_dermoscopy``'s ``config_train.json`` with
``compare_dermoscopy.DEMO_TRAIN``, or ``--train``, and the seed) driven through ``RoundExecutor.execute`` (the
``train`` task, as NVFlare sends it), and the server's step is ``FedAvgController.aggregate`` with the job's server
settings (the clients' ``network`` and ``seed``, as the comparison's job variant sets them; ``weighting``
replaceable). Per round it prints, on each client's validation split (macro-F1, one-vs-rest
macro-AUC, the prediction histogram over nv/mel/bkl, the mean predicted probability of each class):

* ``received``: the global model each client received; ``local``: each client's model after its local epochs
  (with the learning rate and momentum of its optimizer in that round, and the samples it sent);
* ``avg eval``: the aggregate in eval mode (the averaged BatchNorm running statistics, what the server selects);
* ``avg BN re-est``: the aggregate with every BatchNorm's running statistics re-estimated on that client's
  training split (a pass in train mode, cumulative average, no gradient): the BN-averaging hypothesis;
* ``avg train-mode``: the aggregate with batch statistics of the validation batches;
* ``ensemble``: the mean of the local models' softmax outputs, no weight averaging at all;
* the local updates ``d_k = w_k - w`` of the trainable weights: their norms, pairwise cosines, and the norm of the
  aggregated update relative to the weighted mean of the norms (1: aligned, 0: cancelling).

Then the centralised baseline (``baselines.train_selected`` with ``compare_dermoscopy.dermoscopy_recipe``, the
comparison's own) for ``--centralised-epochs`` epochs, with the same per-client summary after every epoch: the
reference that does leave the majority class.

``--output`` writes everything as JSON. The last line is the aggregate's mean validation macro-F1 per round and the
centralised model's per epoch.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from baselines import train_selected
from compare_dermoscopy import CLIENTS, DEMO_TRAIN, dermoscopy_recipe, dermoscopy_sites
from torch import nn
from torch.utils.data import DataLoader

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from medfl.common.metrics import classification_metrics, predict_probabilities
from medfl.common.params import bundle, load_numpy, unbundle
from medfl.common.protocol import NUM_TRAIN_SAMPLES, NUM_TRAIN_STEPS
from medfl.common.random_state import seed_random_transforms
from medfl.common.runtime import seed_everything
from medfl.fedavg.controller import FedAvgController
from medfl.federations.dermoscopy.client import DermoscopyExecutor

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "fedavg_dermoscopy" / "app" / "config"
CPU = torch.device("cpu")


def client_config(data: Path, seed: int, train: Dict) -> Dict:
    """``config_train.json`` of the comparison's FedAvg clients (the job's, ``train``, the seed, one thread)."""
    config = json.loads((JOB / "config_train.json").read_text())
    return {**config, "num_threads": 1, **train, "seed": seed, "device": "cpu",
            "data_root": str(data / "prrfl_ham10000")}


def server_settings(rounds: int, weighting: str, config: Dict) -> Dict:
    """The job's FedAvg workflow args with ``rounds`` and ``weighting``, and every key of the clients' ``config``
    that the workflow also has (``network``, ``seed``) set to the clients' value, as ``compare_dermoscopy.py``'s job
    variant sets them (``medfl.variant.apply_overrides``)."""
    args = json.loads((JOB / "config_fed_server.json").read_text())["workflows"][0]["args"]
    shared = {key: value for key, value in config.items() if key in args}
    return {**args, **shared, "num_rounds": rounds, "weighting": weighting}


def make_client(site: str, config: Dict) -> DermoscopyExecutor:
    """A ``DermoscopyExecutor`` set up as its start of run does (settings, seed, setup, seeded augmentation)."""
    client = DermoscopyExecutor()
    client.site = site
    client.settings = DermoscopyExecutor.Settings.load(config, "config_train.json", site)
    seed_everything(client.settings.seed)
    client.setup(None)
    seed_random_transforms(client.datasets, client.settings.seed)
    return client


def batch_stat_probabilities(model: nn.Module, loader: DataLoader) -> tuple:
    """Softmax outputs in train mode (each validation batch normalised by its own statistics; a last batch of one
    sample, which BatchNorm1d cannot normalise, joins the batch before it), no gradient."""
    model = copy.deepcopy(model).train()
    batches = [(batch["image"], batch["label"]) for batch in loader]
    if len(batches) > 1 and len(batches[-1][1]) == 1:
        (images, labels), (last_image, last_label) = batches[-2], batches.pop()
        batches[-1] = (torch.cat([images, last_image]), torch.cat([labels, last_label]))
    with torch.no_grad():
        outputs = [torch.softmax(model(images), 1) for images, _ in batches]
    return torch.cat(outputs).numpy(), torch.cat([labels for _, labels in batches]).numpy()


def reestimated_bn(model: nn.Module, dataset) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are the cumulative average over one train-mode pass of
    ``dataset`` (its training transform, batch 16; a last batch of one sample, which BatchNorm1d cannot take in
    training, dropped), weights unchanged."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=16, shuffle=True, drop_last=len(dataset) % 16 == 1):
            model(batch["image"])
    return model.eval()


def summary(probabilities: np.ndarray, labels: np.ndarray) -> Dict:
    metrics = classification_metrics(labels, probabilities)
    return {"macro_f1": round(metrics["macro_f1"], 4), "macro_auc": round(metrics["macro_auc"], 4),
            "histogram": np.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]).tolist(),
            "mean_probability": np.round(probabilities.mean(0), 3).tolist()}


def show(tag: str, per_client: Dict[str, Dict]) -> None:
    cells = [f"{c[-1]} {s['macro_f1']:.3f}/{s['macro_auc']:.2f} {s['histogram']} p{s['mean_probability']}"
             for c, s in per_client.items()]
    mean = np.mean([s["macro_f1"] for s in per_client.values()])
    print(f"{tag:<22} mean F1 {mean:.3f} | " + " | ".join(cells), flush=True)


def trainable_vector(params: Dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(params[n], dtype=np.float64).ravel() for n in names])


def update_geometry(sent: Dict[str, np.ndarray], updates: Dict[str, Dict[str, np.ndarray]], weights: List[float],
                    names: Sequence[str]) -> Dict:
    """Norms and pairwise cosines of the local updates of the trainable weights, and ``|sum a_k d_k| / sum a_k |d_k|``."""
    base = trainable_vector(sent, names)
    deltas = {c: trainable_vector(p, names) - base for c, p in updates.items()}
    norms = {c: float(np.linalg.norm(d)) for c, d in deltas.items()}
    a = np.asarray(weights) / np.sum(weights)
    mean = sum(w * d for w, d in zip(a, deltas.values()))
    cosines = {f"{x[-1]}{y[-1]}": float(deltas[x] @ deltas[y] / (norms[x] * norms[y] + 1e-30))
               for x, y in combinations(deltas, 2)}
    ratio = float(np.linalg.norm(mean) / sum(w * n for w, n in zip(a, norms.values())))
    return {"norms": {c: round(n, 4) for c, n in norms.items()}, "cosines": {k: round(v, 3) for k, v in cosines.items()},
            "aggregate_norm_ratio": round(ratio, 3)}


def run_fedavg(data: Path, rounds: int, seed: int, weighting: str, sites: Sequence[str], train: Dict) -> List[Dict]:
    config = client_config(data, seed, train)
    clients = {site: make_client(site, config) for site in sites}
    controller = FedAvgController(**server_settings(rounds, weighting, config))
    controller.models = controller.initial_models()
    print(f"server: weighting {weighting}, initial model seed {controller.settings.seed}, first round whose models "
          f"may become best: {controller.first_best_round()} (best_selection_start "
          f"{controller.settings.best_selection_start})", flush=True)
    probe = copy.deepcopy(clients[sites[0]].model)
    trainable = [name for name, _ in probe.named_parameters()]
    history = []
    for round_number in range(rounds):
        started = time.perf_counter()
        sent = controller.models["global"]
        results, local, record = {}, {}, {"round": round_number}
        received, trained, schedule = {}, {}, {}
        for site, client in clients.items():
            task = FLModel(params=bundle({"global": sent}), current_round=round_number, meta={})
            reply = client.execute("train", FLModelUtils.to_shareable(task), FLContext(), Signal())
            result = FLModelUtils.from_shareable(reply)
            if not result.params:
                raise RuntimeError(f"{site}: the train task failed in round {round_number}")
            result.meta["client_name"] = site
            results[site], local[site] = result, copy.deepcopy(client.model).eval()
            received[site] = {"macro_f1": round(float(result.metrics["global_macro_f1"]), 4)}
            trained[site] = summary(*predict_probabilities(client.model, client.val_loader, CPU))
            group = client.optimizer.param_groups[0]
            schedule[site] = {"lr": group["lr"], "momentum": group["momentum"], "steps": result.meta[NUM_TRAIN_STEPS],
                              "samples": result.meta[NUM_TRAIN_SAMPLES]}
        print(f"round {round_number}: received mean F1 "
              f"{np.mean([r['macro_f1'] for r in received.values()]):.3f} ({received}); schedule {schedule}")
        show(f"r{round_number} local", trained)
        weights = controller.aggregation_weights(results)
        controller.aggregate(results)
        updates = {site: unbundle(result.params)["global"] for site, result in results.items()}
        geometry = update_geometry(sent, updates, weights, trainable)
        print(f"r{round_number} updates: {geometry} weights {weights}")
        aggregate = copy.deepcopy(probe)
        load_numpy(aggregate, controller.models["global"])
        aggregate.eval()
        variants: Dict[str, Dict[str, Dict]] = {"avg eval": {}, "avg BN re-est": {}, "avg train-mode": {},
                                                "ensemble": {}}
        for site, client in clients.items():
            loader = client.val_loader
            variants["avg eval"][site] = summary(*predict_probabilities(aggregate, loader, CPU))
            bn_model = reestimated_bn(aggregate, client.datasets["training"])
            variants["avg BN re-est"][site] = summary(*predict_probabilities(bn_model, loader, CPU))
            variants["avg train-mode"][site] = summary(*batch_stat_probabilities(aggregate, loader))
            outputs = [predict_probabilities(model, loader, CPU) for model in local.values()]
            variants["ensemble"][site] = summary(np.mean([p for p, _ in outputs], 0), outputs[0][1])
        for tag, per_client in variants.items():
            show(f"r{round_number} {tag}", per_client)
        changed = max(float(np.abs(controller.models["global"][k] - sent[k]).max()) for k in trainable)
        print(f"r{round_number}: largest change of a trainable weight by the aggregation {changed:.4g}; "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        record.update(received=received, local=trained, schedule=schedule, weights=weights, updates=geometry,
                      largest_change=changed, **variants)
        history.append(record)
    return history


def run_centralised(data: Path, epochs: int, seed: int, clients: Sequence[str], train: Dict) -> List[Dict]:
    """``baselines.train_selected`` on the pooled training splits with the comparison's recipe; its metric records
    the per-client summary after every epoch (the metric is called once per client and epoch, in client order)."""
    config = client_config(data, seed, train)
    per_epoch_rounds = int(config["local_epochs"])
    recipe = dermoscopy_recipe(config, max(1, -(-epochs // per_epoch_rounds)), seed)
    recipe.epochs = epochs
    sites = dermoscopy_sites(config, list(clients))
    names, seen, history = list(sites), [], []

    def recording_metric(model, loader, device):
        probabilities, labels = predict_probabilities(model, loader, device)
        seen.append(summary(probabilities, labels))
        if len(seen) == len(names):
            per_client = dict(zip(names, seen))
            show(f"centralised epoch {len(history) + 1}", per_client)
            history.append(per_client)
            seen.clear()
        return classification_metrics(labels, probabilities)["macro_f1"]

    recipe.metric = recording_metric
    train_selected(recipe, torch.utils.data.ConcatDataset([s.training for s in sites.values()]),
                   {site: s.validation for site, s in sites.items()})
    return history


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="DATASET_ROOT holding prrfl_ham10000/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weighting", choices=["equal", "samples", "steps"], default="equal",
                        help="the server's aggregation weights (the job's: equal)")
    parser.add_argument("--centralised-epochs", type=int, default=6, help="0: skip the centralised reference")
    parser.add_argument("--output", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS))
    parser.add_argument("--train", type=json.loads, default=DEMO_TRAIN,
                        help="config_train.json overrides (JSON; default: compare_dermoscopy.DEMO_TRAIN)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fedavg = run_fedavg(args.data, args.rounds, args.seed, args.weighting, args.clients, args.train)
    centralised = (run_centralised(args.data, args.centralised_epochs, args.seed, args.clients, args.train)
                   if args.centralised_epochs else [])
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "fedavg": fedavg, "centralised": centralised}
    if args.output:
        args.output.write_text(json.dumps(report, indent=1))
    fed = [round(float(np.mean([s["macro_f1"] for s in r["avg eval"].values()])), 3) for r in fedavg]
    cen = [round(float(np.mean([s["macro_f1"] for s in e.values()])), 3) for e in centralised]
    print(f"FedAvg aggregate mean validation macro-F1 per round {fed}; centralised per epoch {cen}")
    return report


if __name__ == "__main__":
    main()
