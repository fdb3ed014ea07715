"""Client of FedAvg on MedMNIST (the seed job and the scale-out job): trains on its share of the train split,
validates on its val share."""

from __future__ import annotations

from typing import Dict

import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from medfl.common.classification import ClassificationExecutor, ClassificationSettings
from medfl.common.networks import build_network
from medfl.common.train import build_optimizer

from .data import MedMNISTSource, medmnist_info
from .evaluation import evaluate_classifier
from .networks import network_for_data
from .splits import load_client_datasets


class MedMNISTSettings(MedMNISTSource, ClassificationSettings):
    """A MedMNIST client's ``config_train.json``: the classification keys, the data and the client's split."""

    datalist: str = Field(description=(
        "folder of the per-client split files (<site>.json, prepare_medmnist.py); DATASET_ROOT allowed"))


class MedMNISTExecutor(ClassificationExecutor):
    """FedAvg client of the seed's Flower simulation (``fl_demo/FLClient.py`` of the README commit, ALGORITHMS.md
    §4.0; the same client serves the scale-out job, §4.1/§4.4).

    Per task: validate the received global model on this client's val share, as the seed's ``evaluate`` (batches of
    ``eval_batch_size``): accuracy (or ``val_metric``) as ``global``, the summed batch-mean cross-entropy as
    ``global_loss`` and MedMNIST's AUC as ``global_auc``; then train it for ``local_epochs`` epochs on this client's
    train share with a fresh optimizer (Flower's simulation builds a new client, hence a new optimizer, for every
    ``fit``, so no momentum carries over between rounds), and send it back with the number of training examples
    (FedAvg's weight).

    Settings: :class:`MedMNISTSettings`; this client reads ``<datalist>/<site>.json``. The network's
    ``in_channels``, ``num_classes`` and ``image_size`` come from the data (see :func:`~.networks.network_for_data`).
    """

    Settings = MedMNISTSettings

    def build_datasets(self) -> Dict[str, Dataset]:
        self.dataset_name = self.settings.dataset
        split_dir = self.settings.path("datalist", self.site)
        train, val = load_client_datasets(self.settings.npz_path(self.site), split_dir, self.site, self.dataset_name)
        return {"training": train, "validation": val}

    def build_model(self) -> torch.nn.Module:
        info = medmnist_info(self.dataset_name)
        network = network_for_data(self.settings.network, info, self.datasets["training"].image_size)
        return build_network(network.name, **network.args)

    def setup(self, fl_ctx: FLContext) -> None:
        super().setup(fl_ctx)
        # Flower's loaders: shuffled training batches that keep the last, smaller batch (drop_last false, the
        # base client's loader); a separate eval batch size.
        self.eval_batch_size = self.settings.eval_batch_size
        self.val_loader = DataLoader(self.datasets["validation"], batch_size=self.eval_batch_size)

    def evaluate(self, split: str = "validation") -> Dict[str, float]:
        loader = self.val_loader if split == "validation" else DataLoader(self.datasets[split], self.eval_batch_size)
        metrics = evaluate_classifier(self.model, loader, self.device)
        return {"global": metrics[self.val_metric], "global_loss": metrics["loss"], "global_auc": metrics["auc"]}

    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self.optimizer = build_optimizer(self.model.parameters(), self.settings.optimizer)
        super().train_round(abort_signal, fl_ctx)
