"""Per-round wall time, test accuracy and test AUC of one FedAvg/MedMNIST run in Flower's simulation and in
NVFlare's simulator.

The defaults are the seed's code (jopasserat/federated-learning-tutorial at its README commit; ALGORITHMS.md §4.0):
the MedMNIST getting-started CNN, 2 rounds of 2 local epochs, batch 128, a new SGD(0.001, 0.9) per fit, every
client in every round, server-side test evaluation (batches of 50: summed loss, MedMNIST's AUC, accuracy) at
round 0 and after each round. Both sides use the same client splits (``site-<k>.json`` from
``data_preparation/prepare_medmnist.py``), network and initial weights, example-weighted FedAvg, the same
clients each round (:func:`medfl.common.sampling.sample_clients` with the same seed, when ``fraction_fit`` < 1)
and validation on the same clients: those the NVFlare job sends the model to next (all of them at
``fraction_fit`` 1; the seed's Flower 0.19 defaults would validate on 2 of 3, see docs/medmnist.md). The
NVFlare side is the job ``jobs/fedavg_medmnist`` with these settings. A round is timed between the ends of two
consecutive server test evaluations, so it holds the clients' validation of the previous model, their training,
the aggregation and the test evaluation, on both sides. Round 1 also holds the start-up of the clients (Ray
actors, NVFlare client processes). Only measured numbers are printed.

Flower changes packages NVFlare needs (protobuf < 7), so it lives in its own virtual environment, which also runs
this script; the NVFlare side calls the project's ``nvflare`` command (``--nvflare``)::

    python -m venv .venv-flower
    .venv-flower/bin/pip install torch==2.13.0 monai==1.6.1 scipy 'flwr[simulation]'
    .venv-flower/bin/pip install --no-deps -e .     # medfl itself, without NVFlare (Ray's workers import it too)
    .venv-flower/bin/python benchmarks/bench_flower_vs_nvflare_medmnist.py --npz pathmnist.npz \\
        --splits splits_pathmnist --nvflare .venv/bin/nvflare [--rounds 2 --local_epochs 2 --workdir /tmp/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medfl.common.networks import build_network
from medfl.common.sampling import sample_clients
from medfl.common.settings import NetworkSpec
from medfl.federations.medmnist.data import DEFAULT_DATASET, MEDMNIST_2D, MedMNISTDataset, medmnist_info
from medfl.federations.medmnist.evaluation import TEST_METRICS_FILE, evaluate_classifier
from medfl.federations.medmnist.networks import MEDMNIST_NETWORKS, network_for_data
from medfl.federations.medmnist.splits import SUMMARY_NAME, load_client_datasets, site_name
from medfl.variant import make_variant

PROJECT_ROOT = Path(__file__).resolve().parents[1]
JOB_DIR = PROJECT_ROOT / "jobs" / "fedavg_medmnist"

CPU = torch.device("cpu")


@dataclass(frozen=True)
class BenchConfig:
    """One FedAvg/MedMNIST run; defaults are those of ``jobs/fedavg_medmnist``, the seed's (ALGORITHMS.md §4.0)."""

    npz: Path
    split_dir: Path
    dataset: str = DEFAULT_DATASET
    network: str = "medmnist_cnn"
    rounds: int = 2
    local_epochs: int = 2
    batch_size: int = 128
    eval_batch_size: int = 50
    lr: float = 0.001
    momentum: float = 0.9
    fraction_fit: float = 1.0
    min_fit_clients: int = 2
    sampling_seed: int = 0
    seed: int = 0
    cpus_per_client: int = 1

    @property
    def num_clients(self) -> int:
        return json.loads((self.split_dir / SUMMARY_NAME).read_text())["num_clients"]

    @property
    def sites(self) -> List[str]:
        return [site_name(k) for k in range(1, self.num_clients + 1)]


@dataclass(frozen=True)
class RunResult:
    """Seconds per round (rounds 1..R) and the server's test metrics per step (0 = initial model .. R)."""

    round_seconds: List[float]
    test_accuracy: List[float]
    test_auc: List[float]

    @classmethod
    def from_history(cls, history: List[dict]) -> "RunResult":
        """From records ``{"time", "accuracy", "auc"}`` of the server's test evaluations, in step order."""
        return cls(np.diff([h["time"] for h in history]).tolist(), [h["accuracy"] for h in history],
                   [h["auc"] for h in history])


def build_model(cfg: BenchConfig, image_size: int) -> nn.Module:
    network = network_for_data(NetworkSpec(name=cfg.network), medmnist_info(cfg.dataset), image_size)
    return build_network(network.name, **network.args)


# ------------------------------------------------------------------ NVFlare: the job in the simulator
def run_nvflare(cfg: BenchConfig, workdir: Path, nvflare: str) -> RunResult:
    """Run ``jobs/fedavg_medmnist`` with ``cfg``'s settings in ``nvflare simulator`` (one client process per site);
    times come from the server's ``test_metrics.json``."""
    server = {"num_rounds": cfg.rounds, "fraction_fit": cfg.fraction_fit, "min_fit_clients": cfg.min_fit_clients,
              "sampling_seed": cfg.sampling_seed}
    if cfg.npz.name != f"{cfg.dataset}.npz":
        raise ValueError(f"the job reads <data_root>/{cfg.dataset}.npz; rename {cfg.npz} accordingly")
    train = {"dataset": cfg.dataset, "data_root": str(cfg.npz.resolve().parent), "datalist": str(cfg.split_dir.resolve()),
             "network": {"name": cfg.network, "args": {}},
             "optimizer": {"name": "sgd", "lr": cfg.lr, "momentum": cfg.momentum},
             "local_epochs": cfg.local_epochs, "batch_size": cfg.batch_size, "eval_batch_size": cfg.eval_batch_size,
             "seed": cfg.seed, "num_threads": cfg.cpus_per_client, "device": "cpu"}
    job = make_variant(JOB_DIR, workdir / "nvflare_job", server, train)
    workspace = workdir / "nvflare_workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    # the site policy of the NVFlare side (its own venv: this one may have no NVFlare)
    subprocess.run([str(Path(nvflare).with_name("python")), "-m", "medfl", "site-policy", str(workspace)], check=True)
    command = [nvflare, "simulator", str(job), "-w", str(workspace), "-n", str(cfg.num_clients),
               "-t", str(cfg.num_clients)]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(f"no {nvflare!r} command: pass --nvflare <project venv>/bin/nvflare") from None
    history_file = workspace / "server" / "simulate_job" / "app_server" / TEST_METRICS_FILE
    if done.returncode != 0 or not history_file.is_file():
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {workspace}/server/log.txt\n"
                           f"{done.stderr[-2000:]}")
    return RunResult.from_history(json.loads(history_file.read_text()))


# ------------------------------------------------------------------ Flower: start_simulation with Ray
def train_local(model: nn.Module, loader: DataLoader, epochs: int, lr: float, momentum: float) -> None:
    """Flower example's ``train``: a new SGD(lr, momentum) on cross-entropy for ``epochs`` passes over ``loader``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(model(batch["image"]), batch["label"]).backward()
            optimizer.step()


def get_weights(model: nn.Module) -> List[np.ndarray]:
    return [value.cpu().numpy() for value in model.state_dict().values()]


def set_weights(model: nn.Module, weights: List[np.ndarray]) -> None:
    model.load_state_dict({key: torch.as_tensor(w) for key, w in zip(model.state_dict().keys(), weights)})


def run_flower(cfg: BenchConfig) -> RunResult:
    """The same run in Flower's Ray simulation (``flwr.simulation.start_simulation``, one CPU set per client)."""
    try:
        from flwr.client import NumPyClient
        from flwr.common import Context, EvaluateIns, FitIns, ndarrays_to_parameters
        from flwr.server import ServerConfig
        from flwr.server.strategy import FedAvg
        from flwr.simulation import start_simulation
    except ImportError as exc:
        raise RuntimeError(f"the Flower side needs `pip install \"flwr[simulation]\"` ({exc})") from exc

    class MedMNISTClient(NumPyClient):
        """The seed's ``SimulatedFLClient``: Flower creates a client for every fit/evaluate call, so it reads its
        data each time; ``fit`` trains on the client's train share with the round's ``epochs`` and ``batch_size``,
        ``evaluate`` tests on its val share (summed loss, accuracy, AUC)."""

        def __init__(self, site: str):
            self.train_set, self.val_set = load_client_datasets(cfg.npz, cfg.split_dir, site, cfg.dataset)
            self.model = build_model(cfg, self.train_set.image_size)

        def fit(self, parameters, config):
            set_weights(self.model, parameters)
            loader = DataLoader(self.train_set, batch_size=int(config["batch_size"]), shuffle=True)
            train_local(self.model, loader, int(config["epochs"]), cfg.lr, cfg.momentum)
            return get_weights(self.model), len(self.train_set), {}

        def evaluate(self, parameters, config):
            set_weights(self.model, parameters)
            metrics = evaluate_classifier(self.model, DataLoader(self.val_set, batch_size=cfg.eval_batch_size), CPU)
            return metrics["loss"], len(self.val_set), {"accuracy": metrics["accuracy"], "auc": metrics["auc"]}

    def client_fn(context: Context):
        torch.set_num_threads(cfg.cpus_per_client)
        torch.manual_seed(cfg.seed)
        return MedMNISTClient(site_name(int(context.node_config["partition-id"]) + 1)).to_client()

    test_set = MedMNISTDataset.from_npz(cfg.npz, "test", cfg.dataset)
    test_loader = DataLoader(test_set, batch_size=cfg.eval_batch_size)
    torch.manual_seed(cfg.seed)
    server_model = build_model(cfg, test_set.image_size)
    initial = ndarrays_to_parameters(get_weights(server_model))
    evaluated: Dict[int, dict] = {}

    def evaluate_fn(server_round: int, parameters, config):
        """The seed's ``centralised_eval_fn``: the global model on the full test split."""
        set_weights(server_model, parameters)
        metrics = evaluate_classifier(server_model, test_loader, CPU)
        evaluated[server_round] = {"time": time.time(), **metrics}
        return metrics["loss"], {"accuracy": metrics["accuracy"], "auc": metrics["auc"]}

    def fit_config(server_round: int) -> Dict[str, int]:
        """The seed's ``fit_config``: local epochs and batch size, the same every round."""
        return {"epochs": cfg.local_epochs, "batch_size": cfg.batch_size}

    def sampled(client_manager, round_number: int):
        """The proxies of the clients the NVFlare job samples in its (0-based) ``round_number``."""
        by_site = {site_name(proxy.partition_id + 1): proxy for proxy in client_manager.all().values()}
        chosen = sample_clients(list(by_site), round_number, cfg.fraction_fit, cfg.min_fit_clients, cfg.sampling_seed)
        return [by_site[site] for site in chosen]

    class SameSamplingFedAvg(FedAvg):
        """Flower's FedAvg with the NVFlare job's client samples: round ``r`` (1-based here) trains the clients of
        the job's round ``r - 1``; the model after round ``r`` is validated by the clients the job sends it to
        next (its round ``r``, or its final validation)."""

        def configure_fit(self, server_round, parameters, client_manager):
            fit_ins = FitIns(parameters, fit_config(server_round))
            return [(proxy, fit_ins) for proxy in sampled(client_manager, server_round - 1)]

        def configure_evaluate(self, server_round, parameters, client_manager):
            return [(proxy, EvaluateIns(parameters, {})) for proxy in sampled(client_manager, server_round)]

    # the seed's FedAvg(fraction_fit, min_fit_clients, min_available_clients=pool_size, on_fit_config_fn, eval_fn)
    strategy = SameSamplingFedAvg(fraction_fit=cfg.fraction_fit, min_fit_clients=cfg.min_fit_clients,
                                  min_available_clients=cfg.num_clients, on_fit_config_fn=fit_config,
                                  evaluate_fn=evaluate_fn, initial_parameters=initial)
    start_simulation(
        client_fn=client_fn,
        num_clients=cfg.num_clients,
        client_resources={"num_cpus": cfg.cpus_per_client, "num_gpus": 0.0},
        config=ServerConfig(num_rounds=cfg.rounds),
        strategy=strategy,
        ray_init_args={"include_dashboard": False},
    )
    return RunResult.from_history([evaluated[step] for step in sorted(evaluated)])


# ------------------------------------------------------------------ command line
def describe(name: str, result: RunResult) -> str:
    seconds = result.round_seconds
    after_first = f", without round 1 {np.mean(seconds[1:]):.2f}" if len(seconds) > 1 else ""
    return (f"{name}: per-round wall time [s]: {'  '.join(f'{s:.2f}' for s in seconds)}  "
            f"(mean {np.mean(seconds):.2f}{after_first})\n"
            f"{name}: server test accuracy per round (0 = initial): "
            f"{'  '.join(f'{a:.4f}' for a in result.test_accuracy)}\n"
            f"{name}: server test AUC per round (0 = initial): {'  '.join(f'{a:.4f}' for a in result.test_auc)}")


def parse_args(argv: Optional[List[str]] = None) -> Tuple[BenchConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", required=True, type=Path)
    parser.add_argument("--splits", required=True, type=Path, help="folder written by prepare_medmnist.py")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, choices=sorted(MEDMNIST_2D))
    parser.add_argument("--network", default="medmnist_cnn", choices=MEDMNIST_NETWORKS)
    parser.add_argument("--side", default="both", choices=("flower", "nvflare", "both"))
    parser.add_argument("--nvflare", default=shutil.which("nvflare") or "nvflare",
                        help="the nvflare command of the project's environment")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_flower_vs_nvflare_medmnist"))
    defaults = BenchConfig(npz=Path(), split_dir=Path())
    for name in ("rounds", "local_epochs", "batch_size", "eval_batch_size", "min_fit_clients", "sampling_seed", "seed",
                 "cpus_per_client"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("lr", "momentum", "fraction_fit"):
        parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    args = vars(parser.parse_args(argv))
    options = argparse.Namespace(**{key: args.pop(key) for key in ("side", "nvflare", "workdir")})
    return BenchConfig(npz=args.pop("npz"), split_dir=args.pop("splits"), **args), options


def main(argv: Optional[List[str]] = None) -> int:
    cfg, options = parse_args(argv)
    print(f"{cfg.dataset}: {cfg.num_clients} clients, {cfg.rounds} rounds of {cfg.local_epochs} local epochs, "
          f"fraction_fit {cfg.fraction_fit}, min_fit_clients {cfg.min_fit_clients}, network {cfg.network}, "
          f"{cfg.cpus_per_client} CPU thread(s) per client, {os.cpu_count()} CPUs")
    options.workdir.mkdir(parents=True, exist_ok=True)
    results: Dict[str, RunResult] = {}
    for side in ("flower", "nvflare") if options.side == "both" else (options.side,):
        try:
            results[side] = run_flower(cfg) if side == "flower" else run_nvflare(cfg, options.workdir, options.nvflare)
        except RuntimeError as exc:
            print(f"{side}: not run: {exc}", file=sys.stderr)
    for side, result in results.items():
        print(describe(side, result))
    if len(results) == 2:
        flower, nvflare = results["flower"].round_seconds, results["nvflare"].round_seconds
        ratio = np.mean(nvflare) / np.mean(flower)
        later = f", without round 1 {np.mean(nvflare[1:]) / np.mean(flower[1:]):.2f}" if len(flower) > 1 else ""
        print(f"nvflare / flower mean round time: {ratio:.2f}{later}")
    return 0 if len(results) == (2 if options.side == "both" else 1) else 1


if __name__ == "__main__":
    sys.exit(main())
