"""PRR-FL vs FedAvg on the dermoscopy federation: per-client test metrics and the retrogress plot.

    python result_stat/prrfl_dermoscopy_results.py \
        --prrfl_workspace /tmp/nvflare/prrfl_dermoscopy --fedavg_workspace /tmp/nvflare/fedavg_dermoscopy \
        --data_root $DATASET_ROOT/prrfl_ham10000 [--checkpoint best] [--metric macro_f1] [--output retrogress.png]

Test metrics, the original's protocol: every client's personalised model
(``<prrfl_workspace>/<client>/simulate_job/app_<client>/<checkpoint>_personal_model.pt``) and FedAvg's global
model (``<fedavg_workspace>/server/simulate_job/app_server/<checkpoint>_global_model.pt``) on the client's test
split; accuracy, macro-F1 and one-vs-rest macro-AUC x100 per client and their unweighted mean over clients
("overall"; a client whose test split has one class has no AUC and is left out of the AUC mean).

Retrogress, from the TensorBoard events each simulator streamed to its server: per client, the validation
``--metric`` at the start of every round (``val/``, just after the communication) and at its end
(``val_trained/``, just before the next one), for PRR-FL's personalised model and deputy and FedAvg's model.
The plot draws each as a sawtooth whose vertical steps are the communications; the mean change at a
communication (negative: retrogress) is printed. Writes the PNG (default ``<prrfl_workspace>/retrogress.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import matplotlib
import numpy as np
import torch
from torch.utils.data import DataLoader

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from medfl.common.controller import checkpoint_name
from medfl.common.curves import Curve, read_curves
from medfl.common.errors import DataError
from medfl.common.io import atomic_path
from medfl.common.metrics import classification_metrics, predict_probabilities
from medfl.common.networks import build_network
from medfl.federations.dermoscopy.client import TRAINED_PREFIX
from medfl.federations.dermoscopy.data import DEFAULT_IMAGE_SIZE, SkinLesionDataset
from medfl.prrfl.executor import personal_model_path

REPORTED = ("accuracy", "macro_f1", "macro_auc")
# (label, workspace key, metric prefix, line style) of the curves in the retrogress plot; styles keep overlaps visible
RETROGRESS_MODELS = (("PRR-FL personalised", "prrfl", "personal", "-"), ("PRR-FL deputy", "prrfl", "deputy", "--"),
                     ("FedAvg", "fedavg", "global", ":"))
TEST_BATCH_SIZE = 64


def simulate_job(workspace: Path, site: str) -> Path:
    return workspace / site / "simulate_job"


def read_config(app_dir: Path) -> dict:
    path = app_dir / "config" / "config_train.json"
    if not path.is_file():
        raise DataError("training configuration not found (is this a simulator workspace?)", path=path)
    return json.loads(path.read_text())


def load_model(checkpoint: Path, config: dict) -> torch.nn.Module:
    if not checkpoint.is_file():
        raise DataError("model checkpoint not found", path=checkpoint)
    network = config["network"]
    model = build_network(network["name"], **network.get("args", {}))
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    return model.eval()


def personal_models(workspace: Path, kind: str) -> Dict[str, Tuple[Path, dict]]:
    """``{client: (checkpoint, config_train)}`` of every client app folder of a PRR-FL simulator workspace."""
    found = {}
    for app_dir in sorted(workspace.glob("*/simulate_job/app_*")):
        client = app_dir.name[len("app_"):]
        if client != "server":
            found[client] = (Path(personal_model_path(str(app_dir), kind)), read_config(app_dir))
    if not found:
        raise DataError("no client app folders (<client>/simulate_job/app_<client>) found", path=workspace)
    return found


def test_metrics(model: torch.nn.Module, data_root: Path, client: str, config: dict) -> Dict[str, float]:
    dataset = SkinLesionDataset(data_root, client, "test", image_size=int(config.get("image_size", DEFAULT_IMAGE_SIZE)))
    probabilities, labels = predict_probabilities(model, DataLoader(dataset, batch_size=TEST_BATCH_SIZE), "cpu")
    return classification_metrics(labels, probabilities)


def format_row(name: str, columns: List[Dict[str, float]]) -> str:
    cells = " | ".join(" ".join(f"{100 * m[key]:6.2f}" for key in REPORTED) for m in columns)
    return f"{name:<10} | {cells}"


def print_table(results: Dict[str, Dict[str, Dict[str, float]]], methods: List[str]) -> None:
    header = " | ".join(f"{method + ' acc / F1 / AUC':<20}" for method in methods)
    print(f"{'client':<10} | {header}")
    for client, by_method in results.items():
        print(format_row(client, [by_method[m] for m in methods]))
    overall = [{key: float(np.nanmean([results[c][m][key] for c in results])) for key in REPORTED} for m in methods]
    print(format_row("overall", overall))


def sawtooth(start: Curve, end: Curve) -> Tuple[List[float], List[float], List[float]]:
    """Points of the round-by-round curve and the changes at each communication.

    Round ``r`` starts at x = r with ``start`` (val/, step r) and ends at x = r + 1 with ``end`` (val_trained/, step
    r); the change at communication ``r + 1`` is ``start[r + 1] - end[r]``.
    """
    starts, ends = dict(zip(*start)), dict(zip(*end))
    xs, ys, changes = [], [], []
    for step in sorted(set(starts) | set(ends)):
        if step in starts:
            xs.append(step)
            ys.append(starts[step])
            if step - 1 in ends:
                changes.append(starts[step] - ends[step - 1])
        if step in ends:
            xs.append(step + 1)
            ys.append(ends[step])
    return xs, ys, changes


def plot_retrogress(curves: Dict[str, Dict[str, Dict[str, Curve]]], metric: str, output: Path) -> None:
    clients = sorted(curves["prrfl"])
    fig, axes = plt.subplots(1, len(clients), figsize=(4.5 * len(clients), 3.8), squeeze=False)
    for ax, client in zip(axes[0], clients):
        summary = []
        for label, workspace, prefix, style in RETROGRESS_MODELS:
            tags = curves[workspace].get(client, {})
            start, end = tags.get(f"val/{prefix}_{metric}"), tags.get(f"{TRAINED_PREFIX}/{prefix}_{metric}")
            if start is None or end is None:
                continue
            xs, ys, changes = sawtooth(start, end)
            ax.plot(xs, ys, style, label=label, linewidth=2)
            mean_change = float(np.mean(changes)) if changes else math.nan
            summary.append(f"{label} {mean_change:+.4f}")
        ax.set_title(client)
        ax.set_xlabel("round (vertical steps: communications)")
        ax.set_ylabel(f"validation {metric}")
        ax.legend(fontsize=8)
        print(f"{client}: mean change of validation {metric} at a communication: " + ", ".join(summary))
    fig.tight_layout()
    with atomic_path(output) as temporary:
        fig.savefig(temporary, dpi=100, format="png")
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prrfl_workspace", type=Path, required=True, help="simulator workspace of prrfl_dermoscopy")
    parser.add_argument("--fedavg_workspace", type=Path, required=True, help="simulator workspace of fedavg_dermoscopy")
    parser.add_argument("--data_root", type=Path, required=True, help="the prepared federation (clientA..clientD)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--metric", default="macro_f1", help="metric of the retrogress plot")
    parser.add_argument("--output", type=Path, default=None, help="PNG (default <prrfl_workspace>/retrogress.png)")
    args = parser.parse_args(argv)
    try:
        fedavg_app = simulate_job(args.fedavg_workspace, "server") / "app_server"
        fedavg_config = read_config(fedavg_app)
        fedavg_model = load_model(fedavg_app / checkpoint_name(args.checkpoint, "global"), fedavg_config)
        results = {}
        for client, (checkpoint, config) in personal_models(args.prrfl_workspace, args.checkpoint).items():
            results[client] = {"PRR-FL": test_metrics(load_model(checkpoint, config), args.data_root, client, config),
                               "FedAvg": test_metrics(fedavg_model, args.data_root, client, fedavg_config)}
        print(f"test metrics x100 ({args.checkpoint} models; PRR-FL: personalised, FedAvg: global)")
        print_table(results, ["PRR-FL", "FedAvg"])
        curves = {key: read_curves(simulate_job(workspace, "server") / "tb_events")
                  for key, workspace in (("prrfl", args.prrfl_workspace), ("fedavg", args.fedavg_workspace))}
    except (DataError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    output = args.output or args.prrfl_workspace / "retrogress.png"
    plot_retrogress(curves, args.metric, output)
    print(f"retrogress plot written to {output}")


if __name__ == "__main__":
    main()
