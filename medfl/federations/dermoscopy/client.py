"""The dermoscopy federation's client (HAM10000 by acquisition source, PRR-FL's setting): its splits, its SGD
schedule, its validation metrics, and the FedAvg baseline client.

The client reports, for what it received and again after local training, the validation metrics of
:func:`~medfl.common.metrics.classification_metrics` under ``<model>_<metric>`` keys. The received values stream to
TensorBoard as ``val/...`` at step ``r`` (the start of round ``r``, just after the communication) and the trained
values as ``val_trained/...`` at step ``r`` (the end of round ``r``, just before the communication), so the
retrogress of communication ``r -> r+1`` is ``val[r+1] - val_trained[r]`` (``medfl.prrfl.results``).
"""

from __future__ import annotations

from typing import Callable, Dict, Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from medfl.common.classification import ClassificationExecutor, ClassificationSettings
from medfl.common.executor import RoundExecutor
from medfl.common.losses import TrainingLoss, classification_loss
from medfl.common.metrics import classification_metrics, predict_probabilities
from medfl.common.settings import OptimizerSpec
from medfl.common.train import build_optimizer

from . import networks  # noqa: F401  (registers vgg16_slim)
from .data import DEFAULT_IMAGE_SIZE, DEFAULT_NUM_CLASSES, build_client_datasets

TRAINED_PREFIX = "val_trained"

class DermoscopySettings(ClassificationSettings):
    """A dermoscopy client's ``config_train.json``: the federation's data and PRR-FL's SGD schedule.

    The defaults are the original's (a new SGD at ``optimizer.lr * lr_decay ** (round // lr_decay_rounds)``
    every round, 5 local epochs, batch 16); a job states them all anyway.
    """

    optimizer: OptimizerSpec = Field(OptimizerSpec(name="sgd", lr=1e-2, weight_decay=1e-6), description=(
        "the local optimizer, re-created every round at the decayed learning rate (the original's SGD)"))
    local_epochs: int = Field(5, ge=1, description="local epochs per round")
    batch_size: int = Field(16, ge=2, description="training batch size")
    data_root: str = Field(description="the prepared federation (<client>/{train,valid,test}.csv); DATASET_ROOT allowed")
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=8, description="side of the prepared square images, in pixels")
    num_classes: int = Field(DEFAULT_NUM_CLASSES, ge=2, description="classes of the prepared labels")
    augment: bool = Field(True, description="the original's training augmentation (train_transforms)")
    augmentation: Literal["batched", "per_image"] = Field("batched", description=(
        "how the training augmentation is drawn: 'batched' (the same distributions for the whole batch as tensor "
        "operations) or 'per_image' (MONAI image by image, the original's per-sample stream)"))
    lr_decay: float = Field(0.5, gt=0, le=1, description="factor of the learning rate every lr_decay_rounds rounds")
    lr_decay_rounds: int = Field(5, ge=1, description="rounds between two learning-rate decays")


def round_learning_rate(base_lr: float, current_round: int, decay: float, decay_rounds: int) -> float:
    """``base_lr * decay ** (current_round // decay_rounds)``: the original's 1e-2 halved every 5 rounds."""
    if decay_rounds < 1:
        raise ValueError(f"lr_decay_rounds must be >= 1, got {decay_rounds}")
    return base_lr * decay ** (current_round // decay_rounds)


def optimizer_for_round(parameters, settings: DermoscopySettings, current_round: int) -> torch.optim.Optimizer:
    """A new ``optimizer`` at the learning rate of ``current_round`` (``lr_decay``, ``lr_decay_rounds``)."""
    lr = round_learning_rate(settings.optimizer.lr, current_round, settings.lr_decay, settings.lr_decay_rounds)
    return build_optimizer(parameters, settings.optimizer, lr=lr)


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
        """The client's splits; also sets ``self.class_counts`` (training split), which Balanced Softmax needs."""
        datasets = build_client_datasets(self.settings, self.site)
        self.class_counts = datasets["training"].class_counts()
        return datasets

    def evaluate(self, split: str = "validation") -> Dict[str, float]:
        metrics = model_metrics(self.model, split_loader(self, split), self.device, "global")
        return {"global": metrics[f"global_{self.val_metric}"], **metrics}

    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self.optimizer = optimizer_for_round(self.model.parameters(), self.settings, self.current_round)
        super().train_round(abort_signal, fl_ctx)
        self.log_metrics(self.evaluate("validation"), TRAINED_PREFIX, self.current_round)


class DermoscopyFedAvgSettings(DermoscopySettings):
    """The FedAvg dermoscopy client's ``config_train.json``: the dermoscopy keys and the loss."""

    loss: TrainingLoss = Field("ce", description=(
        "cross-entropy (FedAvg, PRR-FL's loss) or Balanced Softmax over the client's training class counts "
        "(BSM-FL, FedMAS's baseline)"))


class DermoscopyExecutor(DermoscopyClient, ClassificationExecutor):
    """FedAvg baseline client on the PRR-FL federation: one ``global`` model trained with cross-entropy, or with
    Balanced Softmax for BSM-FL (:class:`DermoscopyClient`'s data, metrics and SGD schedule; settings
    :class:`DermoscopyFedAvgSettings`)."""

    Settings = DermoscopyFedAvgSettings

    def build_loss(self) -> Callable:
        return classification_loss(self.settings.loss, self.class_counts, self.device)
