"""Server aggregation time as a share of the round time for SoftPull (FedSM), PFA (PRR-FL) and MAS (FedMAS).

    python benchmarks/bench_aggregation.py [--repeats 3] [--work /tmp/bench_aggregation] \
        [--fedsm_workspace <a fedsm_prostate simulator workspace> | --fedsm_train '{"selector_network": ...}']

Aggregation: the controller's ``aggregate`` on one round of results of the job's real networks and client
count (:mod:`offline`), median of ``--repeats`` calls. Round time:

* FedSM: measured, the median time between two round starts (the first excluded: it holds the clients' setup)
  in a simulator run of ``fedsm_prostate`` on the demo prostate federation (``--fedsm_workspace``, or a 4-round
  run made here), the job's UNet and VGG-11 selector, 64x64 slices (``--fedsm_train``: config_train.json
  overrides of that run, which its aggregation then uses too, e.g. the small selector for a quick check);
* PRR-FL and FedMAS: the local training of one client in the plain common loop (``train_epoch``), the job's
  network, image size, batch size and local epochs on ``--train_samples`` random images (demo-sized clients).
  A round takes at least this long, so the share printed is an upper bound.

Goal: every share < 5 %. The last line printed is the largest share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from offline import job_config, offline_round
from simrun import round_start_times, run_job

from medfl.common.networks import build_network
from medfl.common.train import train_epoch
from medfl.fedmas import networks as _fedmas_networks  # noqa: F401  (registers free_head_resnet)

METHODS = {"SoftPull (FedSM)": "fedsm_prostate", "PFA (PRR-FL)": "prrfl_dermoscopy", "MAS (FedMAS)": "fedmas_isic2019"}
DEMO_CLIENTS = ("client_I2CVB", "client_MSD", "client_NCI_ISBI_3T")
DEMO_TRAIN_SAMPLES = 80  # about one HAM10000-mini source's training split
DEMO_IMAGE_SIZE = 64  # the demo slices' size (the job's default, 256, would only upsample them)
GOAL = 0.05


def aggregation_seconds(job: str, repeats: int, job_dir: Optional[Path] = None) -> float:
    offline = offline_round(job, job_dir=job_dir)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        offline.controller.aggregate(offline.results)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measured_round_seconds(workspace: Path) -> float:
    starts = round_start_times(workspace)
    if len(starts) < 3:
        raise RuntimeError(f"{workspace}: need 3 rounds or more to leave out the first")
    return statistics.median(b - a for a, b in zip(starts[1:], starts[2:]))


def local_training_seconds(job: str, train_samples: int) -> float:
    """One client's local training per round in the plain loop, on random images of the job's size."""
    config = job_config(job, "config_train.json")
    network = config["network"]
    model = build_network(network["name"], **network.get("args", {}))
    num_classes = network["args"].get("num_classes", network["args"].get("n_classes"))
    size, channels = int(config["image_size"]), network["args"].get("in_channels", 3)
    batch = int(config["batch_size"])
    images = torch.rand(train_samples, channels, size, size)
    labels = torch.randint(0, num_classes, (train_samples,))
    loader = [{"image": images[i:i + batch], "label": labels[i:i + batch]} for i in range(0, train_samples, batch)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    train_epoch(model, loader, torch.nn.CrossEntropyLoss(), optimizer, torch.device("cpu"))
    return (time.perf_counter() - start) * int(config["local_epochs"])


def main(argv=None) -> Dict[str, Tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train_samples", type=int, default=DEMO_TRAIN_SAMPLES)
    parser.add_argument("--fedsm_workspace", type=Path, default=None)
    parser.add_argument("--fedsm_train", type=json.loads, default={},
                        help="config_train.json overrides of the FedSM run made here, as JSON")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_aggregation"))
    parser.add_argument("--data", type=Path, default=None, help="prepared demo prostate root (default: made here)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as each simulated client (num_threads 1)

    workspace, job_dirs = args.fedsm_workspace, {}
    if workspace is None:
        from compare_prostate import demo_prostate

        data = args.data or demo_prostate(args.work / "data")
        run = run_job("fedsm_prostate", args.work, DEMO_CLIENTS, data, {"num_rounds": 4},
                      {"num_threads": 1, "image_size": DEMO_IMAGE_SIZE, **args.fedsm_train})
        workspace = run.workspace
        job_dirs["fedsm_prostate"] = run.variant
    rounds = {"fedsm_prostate": (measured_round_seconds(workspace), "simulator, demo prostate 64x64")}
    for job in ("prrfl_dermoscopy", "fedmas_isic2019"):
        rounds[job] = (local_training_seconds(job, args.train_samples),
                       f"plain-loop local training, {args.train_samples} images (lower bound)")

    shares = {}
    print(f"{'method':18s} {'aggregate':>10s} {'round':>9s} {'share':>7s}  round time from")
    for method, job in METHODS.items():
        aggregate = aggregation_seconds(job, args.repeats, job_dirs.get(job))
        round_s, source = rounds[job]
        shares[method] = (aggregate, aggregate / round_s)
        print(f"{method:18s} {aggregate:9.3f}s {round_s:8.2f}s {aggregate / round_s:6.1%}  {source}")
    worst = max(shares, key=lambda m: shares[m][1])
    print(f"largest aggregation share of round time: {worst} {shares[worst][1]:.1%} (goal < {GOAL:.0%})")
    return shares


if __name__ == "__main__":
    main()
