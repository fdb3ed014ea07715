"""Test Dice of saved prostate models on the pooled testing list, as the original's ``prostate_2d_test_only.py``.

    python result_stat/prostate_2d_test_only.py \
        --models_dir <workspace>/server/simulate_job/app_server \
        --data_root data_preparation/dataset_2D --datalist data_preparation/datalist_2D \
        [--select_threshold 0.9] [--checkpoint best]

As the original (NVFlare ``research/fed-sm/result_stat/prostate_2d_test_only.py``; ALGORITHMS.md §6.4): the
``testing`` list of the pooled ``client_All.json`` (``--datalist`` a folder: its ``client_All.json``; or one datalist
file), one slice at a time, through the clients' transform (``image_size`` and ``resize_mode`` of the server's
``config_train.json``, the size the clients trained at). With a FedSM workspace (a selector was saved) every slice is
routed by the selector: if its top softmax probability is strictly greater than ``--select_threshold``, the
personalised model of the selected site segments it, else the global model (``--select_threshold 1``: the global
model only). The test Dice is the mean over all pooled slices (foreground Dice per slice); the per-site means, the
selector's accuracy on each training site's slices and how many slices went to each model are printed too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from monai.metrics import DiceMetric

from medfl.common.controller import checkpoint_name
from medfl.common.data import SAMPLE_ID, read_datalist
from medfl.common.errors import DataError
from medfl.common.networks import build_network
from medfl.common.train import predict_binary_mask
from medfl.federations.prostate2d.slices import IMAGE_SIZE, load_slices
from medfl.fedsm.controller import SITE_LABELS_FILE, personal_name

from . import networks  # noqa: F401  (registers the selector networks)
from .super_model import GLOBAL, route

POOLED_DATALIST = "client_All.json"
GLOBAL_NAME = "global"


@dataclass
class DiceReport:
    """Pooled and per-site test Dice (``{"global": ..., "super": ...}``, with ``selector_accuracy`` per training
    site), and how many slices each model segmented (``routed``: ``global`` or ``personal_<client>``)."""

    pooled: Dict[str, float]
    sites: Dict[str, Dict[str, float]]
    routed: Dict[str, int] = field(default_factory=dict)
    slices: Dict[str, int] = field(default_factory=dict)


def load_model(models_dir: Path, kind: str, name: str, network: Dict) -> torch.nn.Module:
    path = models_dir / checkpoint_name(kind, name)
    if not path.is_file():
        raise DataError("model checkpoint not found", path=path)
    model = build_network(network["name"], **network.get("args", {}))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return model.eval()


def pooled_datalist(path: Path) -> Path:
    """``path`` if it is a datalist file, else the pooled ``client_All.json`` in that folder."""
    path = path / POOLED_DATALIST if path.is_dir() else path
    if not path.is_file():
        raise DataError("datalist not found (prepare the data first; see README)", path=path)
    return path


def site_client(sample_id: str) -> str:
    """The client a pooled slice belongs to: ``client_<site>`` of its path ``<site>/<case>/...``."""
    return f"client_{Path(sample_id).parts[0]}"


@dataclass
class SuperModel:
    """The saved models of one run: global, and for FedSM the selector and the personalised model per label."""

    global_model: torch.nn.Module
    selector: Optional[torch.nn.Module] = None
    personal: Sequence[torch.nn.Module] = ()
    labels: Dict[str, int] = field(default_factory=dict)  # {client: selector label}

    def model_name(self, label: int) -> str:
        if label == GLOBAL:
            return GLOBAL_NAME
        return personal_name(next(c for c, v in self.labels.items() if v == label))


def load_run(models_dir: Path, kind: str, config: Dict) -> SuperModel:
    global_model = load_model(models_dir, kind, "global", config["network"])
    labels_file = models_dir / SITE_LABELS_FILE
    if not labels_file.is_file():
        return SuperModel(global_model)
    labels = json.loads(labels_file.read_text())
    by_label = sorted(labels, key=labels.get)
    personal = [load_model(models_dir, kind, personal_name(c), config["network"]) for c in by_label]
    selector = load_model(models_dir, kind, "selector", config["selector_network"])
    return SuperModel(global_model, selector, personal, labels)


@torch.no_grad()
def evaluate_slices(pairs: List[Dict], run: SuperModel, threshold: float) -> DiceReport:
    """Every slice alone (batch 1, as the original): Dice of the global model and, for FedSM, of the super model."""
    names = [GLOBAL_NAME] + (["super"] if run.selector is not None else [])
    per_site: Dict[str, Dict[str, DiceMetric]] = {}
    pooled = {name: DiceMetric(include_background=True, ignore_empty=False) for name in names}
    correct: Counter = Counter()
    routed: Counter = Counter()
    slices: Counter = Counter()
    for pair in pairs:
        client = site_client(pair[SAMPLE_ID])
        image, label = torch.from_numpy(pair["image"])[None], torch.from_numpy(pair["label"])[None]
        slices[client] += 1
        metrics = per_site.setdefault(client, {n: DiceMetric(include_background=True, ignore_empty=False) for n in names})
        predictions = {GLOBAL_NAME: predict_binary_mask(run.global_model, image)}
        if run.selector is not None:
            logits = run.selector(image)
            choice = int(route(logits, threshold)[0])
            routed[run.model_name(choice)] += 1
            model = run.global_model if choice == GLOBAL else run.personal[choice]
            predictions["super"] = predictions[GLOBAL_NAME] if choice == GLOBAL else predict_binary_mask(model, image)
            if client in run.labels:
                correct[client] += int(logits.argmax(dim=1)[0] == run.labels[client])
        for name, prediction in predictions.items():
            pooled[name](y_pred=prediction, y=label)
            metrics[name](y_pred=prediction, y=label)
    sites = {client: {n: float(m.aggregate().item()) for n, m in metrics.items()} for client, metrics in per_site.items()}
    for client in sites:
        if client in run.labels:
            sites[client]["selector_accuracy"] = correct[client] / slices[client]
    return DiceReport({n: float(m.aggregate().item()) for n, m in pooled.items()}, sites, dict(routed), dict(slices))


def transform_settings(config: Dict) -> Tuple[int, str]:
    """The clients' ``image_size`` and ``resize_mode`` (their defaults where the config leaves them out)."""
    return int(config.get("image_size", IMAGE_SIZE)), str(config.get("resize_mode", "bilinear"))


def print_report(report: DiceReport, fedsm: bool, kind: str, threshold: float, datalist: Path) -> None:
    for client, scores in sorted(report.sites.items()):
        print(f"{client}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f" ({report.slices[client]} slices)")
    total = sum(report.slices.values())
    if fedsm:
        counts = ", ".join(f"{name} {count}" for name, count in sorted(report.routed.items()))
        personal = total - report.routed.get(GLOBAL_NAME, 0)
        print(f"routing (top selector probability > {threshold:g}): {personal} of {total} test slices to personalised "
              f"models ({counts})")
    what = f"super model (threshold {threshold:g}) and global model" if fedsm else "global model"
    print(f"pooled test Dice of the {kind} {what}, mean over the {total} slices of {datalist.name}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in report.pooled.items()))


def main(argv=None) -> DiceReport:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models_dir", type=Path, required=True, help="the server's app folder (app_server)")
    parser.add_argument("--data_root", type=Path, required=True, help="the prepared slices (dataset_2D)")
    parser.add_argument("--datalist", type=Path, required=True,
                        help=f"a datalist file, or a folder holding the pooled {POOLED_DATALIST}")
    parser.add_argument("--select_threshold", type=float, default=0.9,
                        help="a slice goes to the personalised model of the selector's top site when that "
                             "probability is strictly greater than this, else to the global model (1: global only)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    args = parser.parse_args(argv)

    config = json.loads((args.models_dir / "config" / "config_train.json").read_text())
    run = load_run(args.models_dir, args.checkpoint, config)
    datalist = pooled_datalist(args.datalist)
    image_size, resize_mode = transform_settings(config)
    pairs = load_slices(read_datalist(datalist, "testing"), args.data_root, image_size=image_size,
                        resize_mode=resize_mode)
    report = evaluate_slices(pairs, run, args.select_threshold)
    print_report(report, run.selector is not None, args.checkpoint, args.select_threshold, datalist)
    return report


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")
