"""Per-round wall time of one FedAvg/MedMNIST run in Flower's simulation and in NVFlare's simulator.

Both sides use the same client splits (``site-<k>.json`` from ``data_preparation/prepare_medmnist.py``), network,
rounds, local epochs, batch size, SGD settings, client-sampling fractions and seed. A round is timed from the
server's choice of clients for training to the end of the per-client evaluation of the new global model
(training, aggregation, server-side test evaluation, client-side val evaluation). Only measured numbers are printed.

Flower side: ``flwr.simulation.start_simulation`` (Ray virtual clients), as in Flower's ``simulation_pytorch``
example. Needs ``pip install "flwr[simulation]"`` (flwr 1.x plus Ray): install it in a separate virtual environment,
as it changes packages that NVFlare also uses (e.g. protobuf). NVFlare side: :func:`run_nvflare_rounds`, wired
once the NVFlare FedAvg/MedMNIST job exists.

    python benchmarks/bench_flower_vs_nvflare_medmnist.py --npz pathmnist.npz --splits splits_pathmnist --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

CUSTOM_DIR = Path(__file__).resolve().parents[1] / "custom"
sys.path.insert(0, str(CUSTOM_DIR))

from medfl.fedavg_medmnist.data import DEFAULT_DATASET, MEDMNIST_2D, MedMNISTDataset, medmnist_info  # noqa: E402
from medfl.fedavg_medmnist.networks import NETWORKS, build_medmnist_network  # noqa: E402
from medfl.fedavg_medmnist.splits import SUMMARY_NAME, load_client_datasets  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """One FedAvg/MedMNIST run; defaults are the Flower-style PathMNIST job's (ALGORITHMS.md §4.4) with the
    example's 3 clients, all sampled every round."""

    npz: Path
    split_dir: Path
    dataset: str = DEFAULT_DATASET
    network: str = "cnn"
    rounds: int = 5
    local_epochs: int = 5
    batch_size: int = 64
    eval_batch_size: int = 50
    lr: float = 0.01
    momentum: float = 0.9
    fraction_fit: float = 1.0
    fraction_evaluate: float = 1.0
    seed: int = 0
    cpus_per_client: float = 1.0

    @property
    def num_clients(self) -> int:
        return json.loads((self.split_dir / SUMMARY_NAME).read_text())["num_clients"]


def train_local(model: nn.Module, loader: DataLoader, epochs: int, lr: float, momentum: float) -> None:
    """Flower example's ``train``: SGD(lr, momentum) on cross-entropy for ``epochs`` passes over ``loader``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(model(batch["image"]), batch["label"]).backward()
            optimizer.step()


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader) -> Tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss, correct, seen = 0.0, 0, 0
    for batch in loader:
        logits = model(batch["image"])
        loss += loss_fn(logits, batch["label"]).item()
        correct += (logits.argmax(dim=1) == batch["label"]).sum().item()
        seen += len(batch["label"])
    return loss / max(seen, 1), correct / max(seen, 1)


def build_model(cfg: BenchConfig) -> nn.Module:
    info = medmnist_info(cfg.dataset)
    return build_medmnist_network(cfg.network, info.channels, info.num_classes)


def get_weights(model: nn.Module) -> List[np.ndarray]:
    return [value.cpu().numpy() for value in model.state_dict().values()]


def set_weights(model: nn.Module, weights: List[np.ndarray]) -> None:
    keys = model.state_dict().keys()
    model.load_state_dict({key: torch.as_tensor(value) for key, value in zip(keys, weights)})


def round_seed(cfg: BenchConfig, server_round: int, client: int) -> int:
    """Seed of a client's batch order in one round, the same on both sides."""
    return int(np.random.SeedSequence([cfg.seed, server_round, client]).generate_state(1)[0])


def run_flower_rounds(cfg: BenchConfig) -> List[float]:
    """Per-round wall times (seconds) of the run in Flower's Ray simulation."""
    try:
        from flwr.client import NumPyClient
        from flwr.common import Context, ndarrays_to_parameters
        from flwr.server import ServerConfig
        from flwr.server.strategy import FedAvg
        from flwr.simulation import start_simulation
    except ImportError as exc:
        raise RuntimeError(f"Flower side needs `pip install \"flwr[simulation]\"` ({exc})") from exc

    class MedMNISTClient(NumPyClient):
        def __init__(self, client: int):
            self.client = client
            # Flower re-creates a client for every fit/evaluate call, so it reads its data every time, as in
            # Flower's examples; that cost is part of what this benchmark measures.
            site = f"site-{client + 1}"
            self.train_set, self.val_set = load_client_datasets(cfg.npz, cfg.split_dir, site, cfg.dataset)
            self.model = build_model(cfg)

        def fit(self, parameters, config):
            set_weights(self.model, parameters)
            order = torch.Generator().manual_seed(round_seed(cfg, int(config["server_round"]), self.client))
            loader = DataLoader(self.train_set, batch_size=cfg.batch_size, shuffle=True, generator=order)
            train_local(self.model, loader, cfg.local_epochs, cfg.lr, cfg.momentum)
            return get_weights(self.model), len(self.train_set), {}

        def evaluate(self, parameters, config):
            set_weights(self.model, parameters)
            loss, accuracy = evaluate_model(self.model, DataLoader(self.val_set, batch_size=cfg.eval_batch_size))
            return loss, len(self.val_set), {"accuracy": accuracy}

    def client_fn(context: Context):
        return MedMNISTClient(int(context.node_config["partition-id"])).to_client()

    test_loader = DataLoader(MedMNISTDataset.from_npz(cfg.npz, "test", cfg.dataset), batch_size=cfg.eval_batch_size)
    server_model = build_model(cfg)

    def evaluate_fn(server_round: int, parameters, config) -> Tuple[float, Dict[str, float]]:
        set_weights(server_model, parameters)
        loss, accuracy = evaluate_model(server_model, test_loader)
        return loss, {"accuracy": accuracy}

    round_starts: Dict[int, float] = {}
    round_ends: Dict[int, float] = {}

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            round_starts[server_round] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_evaluate(self, server_round, results, failures):
            aggregated = super().aggregate_evaluate(server_round, results, failures)
            round_ends[server_round] = time.perf_counter()
            return aggregated

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)  # Flower's ClientManager samples clients with the `random` module
    num_clients = cfg.num_clients
    strategy = TimedFedAvg(
        fraction_fit=cfg.fraction_fit,
        fraction_evaluate=cfg.fraction_evaluate,
        min_fit_clients=max(1, int(cfg.fraction_fit * num_clients)),
        min_evaluate_clients=max(1, int(cfg.fraction_evaluate * num_clients)),
        min_available_clients=num_clients,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda server_round: {"server_round": server_round},
        initial_parameters=ndarrays_to_parameters(get_weights(build_model(cfg))),
    )
    worker_path = os.pathsep.join(filter(None, [str(CUSTOM_DIR), os.environ.get("PYTHONPATH")]))
    start_simulation(
        client_fn=client_fn,
        num_clients=num_clients,
        client_resources={"num_cpus": cfg.cpus_per_client, "num_gpus": 0.0},
        config=ServerConfig(num_rounds=cfg.rounds),
        strategy=strategy,
        # Ray's worker processes must import medfl too.
        ray_init_args={"include_dashboard": False, "runtime_env": {"env_vars": {"PYTHONPATH": worker_path}}},
    )
    return [round_ends[r] - round_starts[r] for r in sorted(round_starts)]


def run_nvflare_rounds(cfg: BenchConfig) -> List[float]:
    """Per-round wall times (seconds) of the same run in NVFlare's simulator (``SimulatorRunner``, one client
    process per site, the FedAvg/MedMNIST job with ``cfg``'s settings), timed over the same span of a round."""
    raise NotImplementedError("the NVFlare FedAvg/MedMNIST job is not wired yet; no NVFlare timings")


def parse_args(argv: Optional[List[str]] = None) -> Tuple[BenchConfig, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", required=True, type=Path)
    parser.add_argument("--splits", required=True, type=Path, help="folder written by prepare_medmnist.py")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, choices=sorted(MEDMNIST_2D))
    parser.add_argument("--network", default="cnn", choices=NETWORKS)
    parser.add_argument("--side", default="both", choices=("flower", "nvflare", "both"))
    defaults = BenchConfig(npz=Path(), split_dir=Path())
    for name in ("rounds", "local_epochs", "batch_size", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("lr", "momentum", "fraction_fit", "fraction_evaluate", "cpus_per_client"):
        parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    args = vars(parser.parse_args(argv))
    side = args.pop("side")
    return BenchConfig(npz=args.pop("npz"), split_dir=args.pop("splits"), **args), side


def main(argv: Optional[List[str]] = None) -> int:
    cfg, side = parse_args(argv)
    if cfg.fraction_evaluate <= 0:
        print("fraction_evaluate must be > 0: a round is timed up to the client evaluation", file=sys.stderr)
        return 2
    runners = {"flower": run_flower_rounds, "nvflare": run_nvflare_rounds}
    timings: Dict[str, List[float]] = {}
    for name in runners if side == "both" else [side]:
        try:
            timings[name] = runners[name](cfg)
        except (NotImplementedError, RuntimeError) as exc:
            print(f"{name}: not run: {exc}", file=sys.stderr)
    for name, seconds in timings.items():
        per_round = "  ".join(f"{s:.2f}" for s in seconds)
        print(f"{name}: per-round wall time [s]: {per_round}  (mean {np.mean(seconds):.2f})")
    if len(timings) == len(runners):
        print(f"nvflare / flower mean round time: {np.mean(timings['nvflare']) / np.mean(timings['flower']):.2f}")
    return 0 if timings else 1


if __name__ == "__main__":
    sys.exit(main())
