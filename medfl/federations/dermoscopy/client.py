"""The dermoscopy federation's client (HAM10000 by acquisition source, PRR-FL's setting): its splits, its SGD
schedule, its validation metrics, and the FedAvg baseline client.

The client reports, for what it received and again after local training, the validation metrics of
:func:`~medfl.common.metrics.classification_metrics` under ``<model>_<metric>`` keys. The received values stream to
TensorBoard as ``val/...`` at step ``r`` (the start of round ``r``, just after the communication) and the trained
values as ``val_trained/...`` at step ``r`` (the end of round ``r``, just before the communication), so the
retrogress of communication ``r -> r+1`` is ``val[r+1] - val_trained[r]`` (``medfl.prrfl.results``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from medfl.common.classification import ClassificationExecutor, build_optimizer
from medfl.common.executor import RoundExecutor
from medfl.common.metrics import classification_metrics, predict_probabilities

from . import networks  # noqa: F401  (registers vgg16_slim)
from .data import build_client_datasets

TRAINED_PREFIX = "val_trained"

# the original's settings (ALGORITHMS.md §2.4-2.5), used where config_train.json leaves a key out
DEFAULTS: Dict[str, Any] = {
    "optimizer": {"name": "sgd", "args": {"lr": 1e-2, "weight_decay": 1e-6}},
    "lr_decay": 0.5,
    "lr_decay_rounds": 5,
    "local_epochs": 5,
    "batch_size": 16,
    "alpha1": 0.7,
    "alpha2": 0.9,
}


def setting(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, or the original's value from `DEFAULTS`."""
    return config.get(key, DEFAULTS[key])


def round_learning_rate(base_lr: float, current_round: int, decay: float = DEFAULTS["lr_decay"],
                        decay_rounds: int = DEFAULTS["lr_decay_rounds"]) -> float:
    """``base_lr * decay ** (current_round // decay_rounds)``: the original's 1e-2 halved every 5 rounds."""
    if decay_rounds < 1:
        raise ValueError(f"lr_decay_rounds must be >= 1, got {decay_rounds}")
    return base_lr * decay ** (current_round // decay_rounds)


def optimizer_for_round(parameters, config: Mapping[str, Any], current_round: int) -> torch.optim.Optimizer:
    """A new ``config["optimizer"]`` at the learning rate of ``current_round`` (``lr_decay``, ``lr_decay_rounds``)."""
    spec = setting(config, "optimizer")
    args = dict(spec.get("args", {}))
    args["lr"] = round_learning_rate(float(args.get("lr", DEFAULTS["optimizer"]["args"]["lr"])), current_round,
                                     float(setting(config, "lr_decay")), int(setting(config, "lr_decay_rounds")))
    return build_optimizer(parameters, {**spec, "args": args})


def model_metrics(model: nn.Module, loader: DataLoader, device: torch.device, prefix: str) -> Dict[str, float]:
    """``{"<prefix>_accuracy", "<prefix>_balanced_accuracy", "<prefix>_macro_f1", "<prefix>_macro_auc"}`` on ``loader``.

    ``macro_auc`` is NaN when the split holds a single class (possible on small clients).
    """
    probabilities, labels = predict_probabilities(model, loader, device)
    return {f"{prefix}_{name}": value for name, value in classification_metrics(labels, probabilities).items()}


def split_loader(client: RoundExecutor, split: str) -> DataLoader:
    """The client's validation loader, or an unshuffled loader of another split with the same batch size."""
    if split == "validation":
        return client.val_loader
    return DataLoader(client.datasets[split], batch_size=client.val_loader.batch_size)


class DermoscopyClient:
    """Mixin for a :class:`ClassificationExecutor` subclass on the PRR-FL federation: the client's splits, the
    validation metrics and the per-round SGD schedule of :class:`DETExecutor`.

    Data, network, batch size, local epochs and SGD schedule as :class:`DETExecutor` (``optimizer``, ``lr_decay``,
    ``lr_decay_rounds``: the optimizer is re-created every round). Reports ``global`` (the ``val_metric``, which the
    server's best-model tracking uses) and every ``global_<metric>``; streams the trained model's metrics as
    ``val_trained/...``. List it before the executor class: ``class C(DermoscopyClient, SomeExecutor)``.
    """

    def build_datasets(self) -> Dict[str, Dataset]:
        return build_client_datasets(self.config, self.site)

    def evaluate(self, split: str = "validation") -> Dict[str, float]:
        metrics = model_metrics(self.model, split_loader(self, split), self.device, "global")
        return {"global": metrics[f"global_{self.val_metric}"], **metrics}

    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self.optimizer = optimizer_for_round(self.model.parameters(), self.config, self.current_round)
        super().train_round(abort_signal, fl_ctx)
        self.log_metrics(self.evaluate("validation"), TRAINED_PREFIX, self.current_round)


class DermoscopyExecutor(DermoscopyClient, ClassificationExecutor):
    """FedAvg baseline client on the PRR-FL federation: one ``global`` model trained with cross-entropy
    (:class:`DermoscopyClient`'s data, metrics and SGD schedule)."""
