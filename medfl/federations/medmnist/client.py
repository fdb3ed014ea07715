"""Client of the Flower-style FedAvg on MedMNIST: trains on its share of the train split, validates on its val share."""

from __future__ import annotations

from typing import Dict

import torch
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from medfl.common.classification import ClassificationExecutor, build_optimizer
from medfl.common.config import config_path
from medfl.common.networks import build_network

from .data import DEFAULT_DATASET, medmnist_info
from .evaluation import DEFAULT_EVAL_BATCH_SIZE, evaluate_classifier
from .networks import DEFAULT_NETWORK, network_for_data
from .splits import load_client_datasets

# Flower's simulation_pytorch example: batch 64 for training, SGD(lr=0.01, momentum=0.9).
DEFAULT_BATCH_SIZE = 64
DEFAULT_OPTIMIZER = {"name": "sgd", "args": {"lr": 0.01, "momentum": 0.9}}


class MedMNISTExecutor(ClassificationExecutor):
    """FedAvg client as in Flower's PathMNIST simulation (ALGORITHMS.md §4.1, §4.4).

    Per task: validate the received global model on this client's val split (accuracy, or ``val_metric``, as
    ``global`` and the mean cross-entropy as ``global_loss``), then train it for ``local_epochs`` epochs with a
    fresh optimizer (Flower's clients are created anew for every ``fit``, so no momentum carries over between
    rounds), and send it back with the number of training examples (FedAvg's weight).

    ``config_train.json`` keys, besides those of :class:`~medfl.common.classification.ClassificationExecutor`:
    ``dataset`` (MedMNIST set, default ``pathmnist``), ``npz_path`` (the MedMNIST file), ``split_dir`` (the folder
    written by ``data_preparation/prepare_medmnist.py``; this client reads ``<split_dir>/<site>.json``) and
    ``eval_batch_size``. Both paths may start with ``DATASET_ROOT``. The network's ``in_channels``,
    ``num_classes`` and ``image_size`` come from the data (see :func:`~.networks.network_for_data`).
    """

    def build_datasets(self) -> Dict[str, Dataset]:
        self.dataset_name = self.config.get("dataset", DEFAULT_DATASET)
        npz_path = config_path(self.config, "npz_path", self.site)
        split_dir = config_path(self.config, "split_dir", self.site)
        train, val = load_client_datasets(npz_path, split_dir, self.site, self.dataset_name)
        return {"training": train, "validation": val}

    def build_model(self) -> torch.nn.Module:
        info = medmnist_info(self.dataset_name)
        network = network_for_data(self.config.get("network", DEFAULT_NETWORK), info, self.datasets["training"].image_size)
        return build_network(network["name"], **network["args"])

    def setup(self, fl_ctx: FLContext) -> None:
        super().setup(fl_ctx)
        # Flower's loaders: shuffled training batches that keep the last, smaller batch; a separate eval batch size.
        batch_size = int(self.config.get("batch_size", DEFAULT_BATCH_SIZE))
        self.train_loader = DataLoader(self.datasets["training"], batch_size=batch_size, shuffle=True)
        self.eval_batch_size = int(self.config.get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE))
        self.val_loader = DataLoader(self.datasets["validation"], batch_size=self.eval_batch_size)

    def evaluate(self, split: str = "validation") -> Dict[str, float]:
        loader = self.val_loader if split == "validation" else DataLoader(self.datasets[split], self.eval_batch_size)
        metrics = evaluate_classifier(self.model, loader, self.device)
        return {"global": metrics[self.val_metric], "global_loss": metrics["loss"]}

    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self.optimizer = build_optimizer(self.model.parameters(), self.config.get("optimizer", DEFAULT_OPTIMIZER))
        super().train_round(abort_signal, fl_ctx)
