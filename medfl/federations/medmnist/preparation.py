"""Split the official train split of a MedMNIST ``.npz`` file over FL clients (Flower's Dirichlet/LDA partitions).

Example (the Flower PathMNIST example's setting: 3 clients, near-IID alpha = 1000, 10 % val per client):

    python data_preparation/prepare_medmnist.py --npz /data/medmnist/pathmnist.npz \\
        --num_clients 3 --alpha 1000 --val_ratio 0.1 --seed 0 --out /data/medmnist/splits_pathmnist

writes ``site-1.json .. site-<K>.json`` (train/val indices into the train split) and ``summary.json`` into
``--out``; each client reads only its own file. The files are swapped in together when all are written; a failed
run leaves the previous ones as they were. ``--alpha inf`` gives IID partitions, small alpha (0.5, 0.1) skew.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

# Run as a plain script from a checkout: make the ``medfl`` package in ``custom/`` importable.
from medfl.federations.medmnist.data import DEFAULT_DATASET, MEDMNIST_2D
from medfl.federations.medmnist.partition import DEFAULT_VAL_RATIO
from medfl.federations.medmnist.splits import (
    DEFAULT_ALPHA,
    DEFAULT_NUM_CLIENTS,
    DEFAULT_SEED,
    SUMMARY_NAME,
    prepare_client_splits,
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", required=True, type=Path, help="MedMNIST file, e.g. pathmnist.npz")
    parser.add_argument("--out", required=True, type=Path, help="folder for site-<k>.json and summary.json")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, choices=sorted(MEDMNIST_2D), help="MedMNIST set")
    parser.add_argument("--num_clients", type=int, default=DEFAULT_NUM_CLIENTS)
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="Dirichlet concentration; inf = IID")
    parser.add_argument("--val_ratio", type=float, default=DEFAULT_VAL_RATIO, help="share of each client's samples")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        summary = prepare_client_splits(
            args.npz, args.out, args.num_clients, args.alpha, args.val_ratio, args.seed, args.dataset
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{summary['dataset']}: {summary['num_source_samples']} train samples -> {args.out}")
    for site, info in summary["clients"].items():
        counts = info["train_label_histogram"]
        print(f"  {site}: train {info['num_train']:6d}  val {info['num_val']:5d}  train labels {counts}")
    print(f"mean total-variation distance to the global label mix: {summary['mean_tv_distance_to_global']:.3f}")
    print(f"summary: {args.out / SUMMARY_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
