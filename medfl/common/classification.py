"""Client for image classification: one model, cross-entropy, a configurable optimizer, validation metrics.

Subclasses provide the data (:meth:`ClassificationExecutor.build_datasets`, items ``{"image", "label"}``);
FedAvg baselines use this class as it is, and methods override the loss, the step or the rounds.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Callable, Dict

import torch
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from .errors import DataError
from .executor import RoundExecutor
from .metrics import classification_metrics, predict_probabilities
from .networks import build_network
from .params import Params, bundle, load_numpy, to_numpy, unbundle
from .train import train_epoch

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def build_optimizer(params, spec: Dict) -> torch.optim.Optimizer:
    """``{"name": "sgd" | "adam", "args": {...}}`` -> a torch optimizer over ``params``."""
    name = spec.get("name", "sgd").lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, **spec.get("args", {}))


class ClassificationExecutor(RoundExecutor):
    """FedAvg client for classification: validates the received ``global`` model, trains it with CE.

    ``config_train.json`` keys: ``network`` (``{"name", "args"}``), ``optimizer`` (``{"name", "args"}``),
    ``local_epochs``, ``batch_size``, ``val_metric`` (a key of
    :func:`~medfl.common.metrics.classification_metrics`, default ``"accuracy"``), ``seed``, ``device``.
    """

    @abstractmethod
    def build_datasets(self) -> Dict[str, Dataset]:
        """``{"training": ..., "validation": ...}`` (``"testing"`` optional) from ``self.config``."""

    def build_model(self) -> torch.nn.Module:
        network = self.config["network"]
        return build_network(network["name"], **network.get("args", {}))

    def build_loss(self) -> Callable:
        """The training loss ``loss(model_output, labels)`` (default: cross-entropy); built after the data."""
        return torch.nn.functional.cross_entropy

    def setup(self, fl_ctx: FLContext) -> None:
        self.datasets = self.build_datasets()
        for split in ("training", "validation"):
            if len(self.datasets.get(split, ())) == 0:
                raise DataError(f"the '{split}' split is empty", site=self.site)
        batch_size = int(self.config.get("batch_size", 32))
        self.train_loader = DataLoader(self.datasets["training"], batch_size=batch_size, shuffle=True,
                                       drop_last=len(self.datasets["training"]) > batch_size)
        self.val_loader = DataLoader(self.datasets["validation"], batch_size=batch_size)
        self.model = self.build_model().to(self.device)
        self.optimizer = build_optimizer(self.model.parameters(), self.config.get("optimizer", {"name": "sgd", "args": {"lr": 0.01}}))
        self.val_metric = self.config.get("val_metric", "accuracy")
        self.loss_fn = self.build_loss()

    def num_samples(self, split: str) -> int:
        return len(self.datasets[split])

    def load_payload(self, params: Params, fl_ctx: FLContext) -> None:
        received = unbundle(params)
        if "global" not in received:
            raise DataError("the server sent no parameters for 'global'", site=self.site)
        load_numpy(self.model, received["global"])

    def evaluate(self, split: str = "validation") -> Dict[str, float]:
        loader = self.val_loader if split == "validation" else DataLoader(self.datasets[split], batch_size=64)
        probabilities, labels = predict_probabilities(self.model, loader, self.device)
        return {"global": classification_metrics(labels, probabilities)[self.val_metric]}

    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        epochs = int(self.config.get("local_epochs", 1))
        for epoch in range(epochs):
            loss = train_epoch(self.model, self.train_loader, self.loss_fn, self.optimizer, self.device,
                               step=self.train_step, abort_signal=abort_signal)
            self.log_metrics({"global": loss}, "train_loss", self.current_round * epochs + epoch)
            self.log_info(fl_ctx, f"round {self.current_round} epoch {epoch + 1}/{epochs}: loss {loss:.4f}")

    def export_params(self, fl_ctx: FLContext) -> Params:
        return bundle({"global": to_numpy(self.model.state_dict())})
