"""Test Dice of saved prostate models on each site's testing split (FedAvg or FedSM server workspace).

    python result_stat/prostate_2d_test_only.py \
        --models_dir <workspace>/server/simulate_job/app_server \
        --dataset_base_dir data_preparation/dataset_2D --datalist_json_path data_preparation/datalist_2D \
        [--select_threshold 0.9] [--checkpoint best]

With a FedSM workspace (a selector was saved) every test image is routed by the selector: if its top softmax
probability is >= ``--select_threshold``, the personalised model of the selected site segments it, else the
global model (``--select_threshold 1``: global model only). Prints per-site and mean Dice of the super model
and of the global model, and the selector's accuracy. Dice is foreground Dice per image, averaged per site.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import torch
from monai.metrics import DiceMetric
from torch.utils.data import DataLoader

from medfl.common.controller import checkpoint_name
from medfl.common.data import SegmentationSliceDataset, load_segmentation_pairs, read_datalist
from medfl.common.errors import DataError
from medfl.common.networks import build_network
from medfl.common.train import predict_binary_mask
from medfl.fedsm.controller import SITE_LABELS_FILE, personal_name
from medfl.fedsm.super_model import super_model_predict


def load_model(models_dir: Path, kind: str, name: str, network: Dict) -> torch.nn.Module:
    path = models_dir / checkpoint_name(kind, name)
    if not path.is_file():
        raise DataError("model checkpoint not found", path=path)
    model = build_network(network["name"], **network.get("args", {}))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return model.eval()


def site_datalists(path: Path) -> Dict[str, Path]:
    """``{client: datalist}``: every ``client_*.json`` of a folder except ``client_All``, or one file."""
    if path.is_file():
        return {path.stem: path}
    lists = {p.stem: p for p in sorted(path.glob("client_*.json")) if p.stem != "client_All"}
    if not lists:
        raise DataError("no client_*.json datalists found", path=path)
    return lists


@torch.no_grad()
def test_site(loader: DataLoader, global_model, fedsm, threshold: float, site_label) -> Dict[str, float]:
    dice = {"global": DiceMetric(include_background=True, ignore_empty=False)}
    correct = total = 0
    if fedsm:
        dice["super"] = DiceMetric(include_background=True, ignore_empty=False)
    for batch in loader:
        image, label = batch["image"], batch["label"]
        dice["global"](y_pred=predict_binary_mask(global_model, image), y=label)
        if fedsm:
            selector, personal = fedsm
            dice["super"](y_pred=super_model_predict(image, selector, global_model, personal, threshold), y=label)
            if site_label is not None:
                correct += int((selector(image).argmax(dim=1) == site_label).sum())
                total += image.shape[0]
    scores = {name: float(metric.aggregate().item()) for name, metric in dice.items()}
    if total:
        scores["selector_accuracy"] = correct / total
    return scores


def main(argv=None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models_dir", type=Path, required=True, help="the server's app folder (app_server)")
    parser.add_argument("--dataset_base_dir", type=Path, required=True)
    parser.add_argument("--datalist_json_path", type=Path, required=True, help="datalist folder or one datalist")
    parser.add_argument("--select_threshold", type=float, default=0.9)
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    args = parser.parse_args(argv)

    config = json.loads((args.models_dir / "config" / "config_train.json").read_text())
    global_model = load_model(args.models_dir, args.checkpoint, "global", config["network"])
    labels_file = args.models_dir / SITE_LABELS_FILE
    fedsm, site_labels = None, {}
    if labels_file.is_file():
        site_labels = json.loads(labels_file.read_text())
        by_label = sorted(site_labels, key=site_labels.get)
        personal = [load_model(args.models_dir, args.checkpoint, personal_name(c), config["network"]) for c in by_label]
        fedsm = (load_model(args.models_dir, args.checkpoint, "selector", config["selector_network"]), personal)

    results: Dict[str, Dict[str, float]] = {}
    for client, datalist in site_datalists(args.datalist_json_path).items():
        pairs = load_segmentation_pairs(read_datalist(datalist, "testing", client), args.dataset_base_dir, client)
        loader = DataLoader(SegmentationSliceDataset(pairs), batch_size=16)
        results[client] = test_site(loader, global_model, fedsm, args.select_threshold, site_labels.get(client))
        print(f"{client}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[client].items()) + f" ({len(pairs)} slices)")
    columns: List[str] = list(next(iter(results.values())))
    mean = {k: sum(r[k] for r in results.values() if k in r) / sum(k in r for r in results.values()) for k in columns}
    what = "super model (threshold %.2f) and global model" % args.select_threshold if fedsm else "global model"
    print(f"mean test Dice of the {args.checkpoint} {what}: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    return results


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")
