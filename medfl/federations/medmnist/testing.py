"""Test metrics of the saved FedAvg/MedMNIST global models, and the server's test curve of a run.

    DATASET_ROOT=/data python result_stat/medmnist_test_only.py \
        --models_dir <workspace>/server/simulate_job/app_server [--npz /data/medmnist/pathmnist.npz] \
        [--plot results/fedavg_medmnist_test.png]

Reads the job's ``config_train.json`` from ``<models_dir>/config`` (MedMNIST set, network, ``npz_path``, which may
start with ``DATASET_ROOT``; ``--npz`` overrides it). For ``best_global_model.pt`` (chosen by the clients'
validation accuracy, not by the test set) and ``last_global_model.pt`` it prints accuracy, MedMNIST's AUC, the
seed's summed loss and the mean cross-entropy, balanced accuracy, macro-F1 and macro-AUC on the official test split.
It then prints the server's per-round test accuracy and AUC from ``test_metrics.json`` (round 0 = initial model)
and, with ``--plot``, draws them with the loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch.utils.data import DataLoader

from medfl.common.controller import checkpoint_name
from medfl.common.errors import DataError
from medfl.common.networks import build_network
from medfl.federations.medmnist.client import MedMNISTSettings
from medfl.federations.medmnist.data import MedMNISTDataset, medmnist_info
from medfl.federations.medmnist.evaluation import TEST_METRICS_FILE, evaluate_classifier
from medfl.federations.medmnist.networks import network_for_data

CHECKPOINTS = ("best", "last")
METRICS = ("accuracy", "auc", "loss", "mean_loss", "balanced_accuracy", "macro_f1", "macro_auc")


def test_checkpoints(models_dir: Path, npz: Optional[Path]) -> Dict[str, Dict[str, float]]:
    """``{"best" | "last": metrics}`` of the saved global models on the test split."""
    config_file = models_dir / "config" / "config_train.json"
    if not config_file.is_file():
        raise DataError("no config/config_train.json: is this the server's app folder (app_server)?", models_dir)
    settings = MedMNISTSettings.load(json.loads(config_file.read_text()), str(config_file))
    dataset = settings.dataset
    test_set = MedMNISTDataset.from_npz(npz or settings.npz_path("server"), "test", dataset)
    loader = DataLoader(test_set, batch_size=settings.eval_batch_size)
    network = network_for_data(settings.network, medmnist_info(dataset), test_set.image_size)
    results = {}
    for kind in CHECKPOINTS:
        path = models_dir / checkpoint_name(kind, "global")
        if not path.is_file():
            raise DataError("model checkpoint not found", path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_network(network.name, **network.args)
        model.load_state_dict(state["state_dict"])
        results[kind] = evaluate_classifier(model, loader, torch.device("cpu"))
        chosen = f" (sent in round {state['round_number']}, clients' val {state['score']:.4f})" if kind == "best" else ""
        print(f"{kind} global model{chosen}: " + ", ".join(f"{m} {results[kind][m]:.4f}" for m in METRICS)
              + f" on {len(test_set)} test images")
    return results


def plot_history(history: List[dict], output: Path) -> Path:
    steps = [entry["step"] for entry in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes, ("accuracy", "auc", "loss")):
        ax.plot(steps, [entry[metric] for entry in history], marker="o")
        ax.set_title(f"server test {metric}")
        ax.set_xlabel("round (0 = initial model)")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models_dir", type=Path, required=True, help="the server's app folder (app_server)")
    parser.add_argument("--npz", type=Path, default=None, help="MedMNIST file (default: npz_path of the config)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the server's test curve")
    args = parser.parse_args(argv)
    results = test_checkpoints(args.models_dir, args.npz)
    history_file = args.models_dir / TEST_METRICS_FILE
    if history_file.is_file():
        history = json.loads(history_file.read_text())
        print("server test accuracy per round: " + "  ".join(f"{e['step']}: {e['accuracy']:.4f}" for e in history))
        print("server test AUC per round: " + "  ".join(f"{e['step']}: {e['auc']:.4f}" for e in history))
        if args.plot:
            print(f"plot: {plot_history(history, args.plot)}")
    return results


if __name__ == "__main__":
    try:
        main()
    except (DataError, ValueError) as e:
        sys.exit(f"error: {e}")
