"""Per-site test metrics of a HarmoFL job's best (or last) global model, as the released ``--test`` run.

    DATASET_ROOT=data_preparation python result_stat/harmofl_test_only.py \
        --models_dir <workspace>/server/simulate_job/app_server [--checkpoint best] [--clients client_HK ...]

Everything else comes from the server's app folder: ``config/config_train.json`` (data paths, network, batch
size, amplitude mode), ``config/config_fed_client.json`` (the client class, whose ``build_split("testing")``
and ``score`` are used, so the script serves every HarmoFL job), the frozen amplitude reference
``harmofl_amplitude.pt`` and the clients that took part in the exchange. Each site's testing split is
amplitude-normalised with that reference and evaluated in batches of ``batch_size`` (the networks' BatchNorm
uses batch statistics, as in the released code). Prints one line per site and the unweighted mean over sites.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from torch.utils.data import DataLoader

from medfl.common.controller import checkpoint_name
from medfl.common.errors import DataError
from medfl.common.networks import build_network
from medfl.common.settings import NetworkSpec
from medfl.harmofl.amp_norm import normalize_inputs
from medfl.harmofl.amplitude_exchange import AMPLITUDE_FILE, AMPLITUDE_KEY, amplitude_normalizer
from medfl.harmofl.executor import HarmoFLClient


def load_json(path: Path) -> Dict:
    if not path.is_file():
        raise DataError("file not found (is --models_dir the server's app folder?)", path=path)
    return json.loads(path.read_text())


def client_executor(config_dir: Path) -> HarmoFLClient:
    """The HarmoFL executor named in ``config_fed_client.json``, built with its arguments."""
    spec = load_json(config_dir / "config_fed_client.json")["executors"][0]["executor"]
    module_name, _, class_name = spec["path"].rpartition(".")
    executor = getattr(importlib.import_module(module_name), class_name)(**spec.get("args", {}))
    if not isinstance(executor, HarmoFLClient):
        raise DataError(f"{spec['path']} is not a HarmoFL client", path=config_dir / "config_fed_client.json")
    return executor


def load_global_model(models_dir: Path, kind: str, network: NetworkSpec) -> torch.nn.Module:
    path = models_dir / checkpoint_name(kind, "global")
    if not path.is_file():
        raise DataError("model checkpoint not found", path=path)
    model = build_network(network.name, **network.args)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return model


def evaluate_sites(models_dir: Path, kind: str = "best", clients: Sequence[str] = ()) -> Dict[str, Dict[str, float]]:
    """``{client: {metric: value}}`` of the saved global model on every client's testing split."""
    config_dir = models_dir / "config"
    executor = client_executor(config_dir)
    settings = executor.Settings.load(load_json(config_dir / "config_train.json"), str(config_dir / "config_train.json"))
    amplitude_path = models_dir / AMPLITUDE_FILE
    if not amplitude_path.is_file():
        raise DataError("amplitude reference not found (written by HarmoFLController after the exchange)",
                        path=amplitude_path)
    exchange = torch.load(amplitude_path, weights_only=True)
    model = load_global_model(models_dir, kind, settings.network)
    normalize_inputs(model, amplitude_normalizer(settings, exchange[AMPLITUDE_KEY].numpy()))
    executor.settings, executor.device = settings, torch.device("cpu")
    results = {}
    for client in clients or exchange["clients"]:
        executor.site = client
        dataset = executor.build_split("testing")
        loader = DataLoader(dataset, batch_size=settings.batch_size)
        results[client] = executor.score(model, loader)
        scores = ", ".join(f"{k} {v:.4f}" for k, v in results[client].items())
        print(f"{client}: {scores} ({len(dataset)} samples)")
    columns: List[str] = list(next(iter(results.values())))
    mean = {k: sum(r[k] for r in results.values()) / len(results) for k in columns}
    print(f"mean over {len(results)} sites, {kind} global model: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    return results


def main(argv=None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models_dir", type=Path, required=True, help="the server's app folder (app_server)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--clients", nargs="*", default=(), help="default: the clients of the amplitude exchange")
    args = parser.parse_args(argv)
    return evaluate_sites(args.models_dir, args.checkpoint, args.clients)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")
