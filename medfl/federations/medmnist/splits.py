"""Per-client split files: which samples of the official MedMNIST train split each client trains and validates on.

``prepare_client_splits`` (run once, by whoever prepares the federation) writes into one folder:

* ``site-<k>.json`` for ``k = 1..K``: that client's ``train`` and ``val`` indices into the official ``train_*``
  arrays, plus the parameters that made them; a client reads only its own file (``read_client_split``);
* ``summary.json``: the parameters, the global label histogram and, per client, the sizes, label histograms,
  Dirichlet label distribution and total-variation distance to the global label mix.

The files are swapped in together, the summary last (``medfl.common.staging``), so a failed run leaves the previous
files exactly as they were. Bad split files raise :class:`~medfl.common.errors.DataError` naming the site, the
file and the problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from medfl.common.errors import DataError
from medfl.common.staging import StagedOutput

from .data import DEFAULT_DATASET, MedMNISTDataset, load_medmnist_split, medmnist_info
from .partition import (
    DEFAULT_VAL_RATIO,
    label_histogram,
    lda_partition,
    split_train_val,
    total_variation_to_global,
)

PathType = Union[str, PathLike]

SPLIT_FORMAT = "medfl.medmnist.client_split"
SUMMARY_FORMAT = "medfl.medmnist.split_summary"
FORMAT_VERSION = 1
SUMMARY_NAME = "summary.json"
# The Flower PathMNIST example's pool size and Dirichlet concentration (alpha = 1000 is near-IID).
DEFAULT_NUM_CLIENTS = 3
DEFAULT_ALPHA = 1000.0
DEFAULT_SEED = 0


def site_name(index: int) -> str:
    """NVFlare-style client name of the ``index``-th client (1-based): ``site-1``, ``site-2``, ..."""
    return f"site-{index}"


def client_split_path(split_dir: PathType, site: str) -> Path:
    """Where ``site``'s split file lives in a folder written by :func:`prepare_client_splits`."""
    return Path(split_dir) / f"{site}.json"


def _alpha_to_json(alpha: float) -> Union[float, str]:
    return "inf" if math.isinf(alpha) else alpha


def prepare_client_splits(
    npz_path: PathType,
    out_dir: PathType,
    num_clients: int = DEFAULT_NUM_CLIENTS,
    alpha: float = DEFAULT_ALPHA,
    val_ratio: float = DEFAULT_VAL_RATIO,
    seed: int = DEFAULT_SEED,
    dataset: str = DEFAULT_DATASET,
) -> Dict[str, Any]:
    """Partition the official train split of ``npz_path`` over ``num_clients`` clients and write their files.

    Partitions: :func:`~medfl.federations.medmnist.partition.lda_partition` with ``alpha`` and ``seed``; then each
    client ``k`` keeps ``floor(val_ratio * n_k)`` of its samples for validation, drawn with seed ``(seed, k)``.
    Refuses to write into a folder holding other clients' files (from a run with more clients). Returns the
    summary that is also written to ``out_dir/summary.json``.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    npz_path = Path(npz_path)
    out_dir = Path(out_dir)
    num_classes = medmnist_info(dataset).num_classes
    _, labels = load_medmnist_split(npz_path, "train", dataset)
    sites = [site_name(k) for k in range(1, num_clients + 1)]

    out_dir.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in out_dir.glob("site-*.json") if p.stem not in sites)
    if stale:
        raise FileExistsError(f"{out_dir}: holds split files of other clients {stale}; use an empty folder")

    parts, class_probs = lda_partition(labels, num_clients, alpha, seed)
    params = {
        "source": npz_path.name,
        "dataset": dataset,
        "num_source_samples": len(labels),
        "num_classes": num_classes,
        "num_clients": num_clients,
        "alpha": _alpha_to_json(alpha),
        "val_ratio": val_ratio,
        "seed": seed,
    }
    tv_distance = total_variation_to_global(labels, parts, num_classes)
    clients, files = {}, {}
    for k, (site, part) in enumerate(zip(sites, parts), start=1):
        train, val = split_train_val(part, val_ratio, seed=(seed, k))
        record = {"format": SPLIT_FORMAT, "version": FORMAT_VERSION, "site": site, **params}
        files[client_split_path(out_dir, site)] = {**record, "train": train.tolist(), "val": val.tolist()}
        clients[site] = {
            "num_train": len(train),
            "num_val": len(val),
            "train_label_histogram": label_histogram(labels[train], num_classes).tolist(),
            "val_label_histogram": label_histogram(labels[val], num_classes).tolist(),
            "class_distribution": class_probs[k - 1].tolist(),
            "tv_distance_to_global": float(tv_distance[k - 1]),
        }
    summary = {
        "format": SUMMARY_FORMAT,
        "version": FORMAT_VERSION,
        **params,
        "classes_present": np.unique(labels).tolist(),
        "global_label_histogram": label_histogram(labels, num_classes).tolist(),
        "mean_tv_distance_to_global": float(tv_distance.mean()),
        "clients": clients,
    }
    files[out_dir / SUMMARY_NAME] = summary
    with StagedOutput() as staged:
        for path, content in files.items():
            staged.write_json(content, path)
    return summary


@dataclass(frozen=True)
class ClientSplit:
    """One client's sample indices into the official train split, and the parameters that made them."""

    site: str
    train: np.ndarray
    val: np.ndarray
    params: Dict[str, Any]


def read_client_split(path: PathType, num_source_samples: int, site: Optional[str] = None) -> ClientSplit:
    """Read and check a ``site-<k>.json`` file against the train split it indexes (``num_source_samples``).

    Raises :class:`~medfl.common.errors.DataError` naming ``site``, the file and the problem: missing, not JSON,
    another format, missing keys, indices that are not integers in ``[0, num_source_samples)``, repeated or shared
    by train and val, or a file made for a train split of another size (re-run ``prepare_medmnist.py``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("client split file not found (run data_preparation/prepare_medmnist.py)", path, site)
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not a readable JSON split file ({exc})", path, site) from exc
    if not isinstance(content, dict) or content.get("format") != SPLIT_FORMAT:
        raise DataError(f"not a MedMNIST client split file (format must be {SPLIT_FORMAT!r})", path, site)
    if content.get("version") != FORMAT_VERSION:
        raise DataError(f"split file version {content.get('version')!r}, this code reads {FORMAT_VERSION}", path, site)
    missing = [key for key in ("site", "num_source_samples", "train", "val") if key not in content]
    if missing:
        raise DataError(f"missing key(s) {missing}", path, site)
    if content["num_source_samples"] != num_source_samples:
        raise DataError(
            f"made for a train split of {content['num_source_samples']} samples, but the MedMNIST file "
            f"has {num_source_samples}; re-run prepare_medmnist.py on this file",
            path,
            site,
        )
    train = _check_indices(path, site, "train", content["train"], num_source_samples)
    val = _check_indices(path, site, "val", content["val"], num_source_samples)
    if np.intersect1d(train, val).size:
        raise DataError("train and val share indices", path, site)
    empty = [key for key, indices in (("train", train), ("val", val)) if not indices.size]
    if empty:
        raise DataError(f"the {'/'.join(empty)} list is empty", path, site)
    params = {key: value for key, value in content.items() if key not in ("train", "val")}
    return ClientSplit(site=content["site"], train=train, val=val, params=params)


def load_client_datasets(
    npz_path: PathType, split_dir: PathType, site: str, dataset: str = DEFAULT_DATASET
) -> Tuple[MedMNISTDataset, MedMNISTDataset]:
    """``site``'s train and val datasets: the official train split of ``npz_path``, subset by its split file.

    Only the client's own samples are kept in memory (the full train split is read once and dropped).
    """
    images, labels = load_medmnist_split(npz_path, "train", dataset, site)
    path = client_split_path(split_dir, site)
    split = read_client_split(path, len(labels), site)
    if split.site != site:
        raise DataError(f"belongs to {split.site!r}, not to {site!r}", path, site)
    if split.params.get("dataset") != dataset:
        raise DataError(f"made for {split.params.get('dataset')!r}, but {site} loads {dataset!r}", path, site)
    return MedMNISTDataset(images, labels, split.train), MedMNISTDataset(images, labels, split.val)


def _check_indices(path: Path, site: Optional[str], key: str, values: Any, num_source_samples: int) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DataError(f"'{key}' must be a list of integer sample indices", path, site)
    indices = np.array(values, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_source_samples):
        raise DataError(f"'{key}' has indices outside [0, {num_source_samples})", path, site)
    if np.unique(indices).size != indices.size:
        raise DataError(f"'{key}' repeats indices", path, site)
    return indices
