"""Client for image classification: one model, cross-entropy, a configurable optimizer, validation metrics.

Subclasses provide the data (:meth:`ClassificationExecutor.build_datasets`, items ``{"image", "label"}``);
FedAvg baselines use this class as it is, and methods override the loss, the step or the rounds.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, Dict, Literal

import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from .errors import DataError
from .executor import RoundExecutor
from .metrics import classification_metrics, predict_probabilities
from .networks import build_network
from .params import Params, bundle, load_numpy, to_numpy, unbundle
from .settings import ClientSettings
from .train import build_optimizer, train_epoch


class ClassificationSettings(ClientSettings):
    """A classification client's ``config_train.json``: the common keys and the validation metric."""

    val_metric: Literal["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"] = Field(
        "accuracy", description="validation metric reported as 'global' (best-model selection)")
    drop_last: bool = Field(False, description=(
        "drop each epoch's last incomplete training batch (false: kept, PyTorch's DataLoader default, as HarmoFL, "
        "PRR-FL and the MedMNIST seed train). Kept, a last batch of a single sample is still dropped under a "
        "network with BatchNorm1d, which cannot train on one sample (the original would stop there); a training "
        "set no larger than one batch is never dropped"))


def drops_last_batch(num_samples: int, batch_size: int, drop_last: bool, model: torch.nn.Module) -> bool:
    """``DataLoader(drop_last=...)`` for a shuffled training set of ``num_samples``: ``drop_last`` when the set is
    larger than one batch (a smaller set would give no batch at all); when kept, ``True`` still if the last batch
    would hold a single sample and ``model`` has a ``BatchNorm1d``, which raises on one sample in training (the
    original stops there)."""
    if num_samples <= batch_size:
        return False
    if drop_last:
        return True
    single = num_samples % batch_size == 1
    return single and any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())


class ClassificationExecutor(RoundExecutor):
    """FedAvg client for classification: validates the received ``global`` model, trains it with CE.

    Settings: :class:`ClassificationSettings` (a federation's client adds its data keys in a subclass).
    """

    Settings = ClassificationSettings

    @abstractmethod
    def build_datasets(self) -> Dict[str, Dataset]:
        """``{"training": ..., "validation": ...}`` (``"testing"`` optional) from ``self.settings``."""

    def build_model(self) -> torch.nn.Module:
        return build_network(self.settings.network.name, **self.settings.network.args)

    def build_loss(self) -> Callable:
        """The training loss ``loss(model_output, labels)`` (default: cross-entropy); built after the data."""
        return torch.nn.functional.cross_entropy

    def setup(self, fl_ctx: FLContext) -> None:
        self.datasets = self.build_datasets()
        for split in ("training", "validation"):
            if len(self.datasets.get(split, ())) == 0:
                raise DataError(f"the '{split}' split is empty", site=self.site)
        self.model = self.build_model().to(self.device)
        self.train_loader = self.training_loader(self.datasets["training"])
        self.val_loader = DataLoader(self.datasets["validation"], batch_size=self.settings.batch_size)
        self.optimizer = build_optimizer(self.model.parameters(), self.settings.optimizer)
        self.val_metric = self.settings.val_metric
        self.loss_fn = self.build_loss()

    def training_loader(self, dataset: Dataset) -> DataLoader:
        """The shuffled training loader of ``dataset`` (``drop_last`` by :func:`drops_last_batch`)."""
        batch_size = self.settings.batch_size
        drop = drops_last_batch(len(dataset), batch_size, self.settings.drop_last, self.model)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=drop)

    def score_name(self) -> str:
        return self.settings.val_metric

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
        epochs = self.settings.local_epochs
        for epoch in range(epochs):
            loss = train_epoch(self.model, self.train_loader, self.loss_fn, self.optimizer, self.device,
                               step=self.train_step, abort_signal=abort_signal)
            self.log_metrics({"global": loss}, "train_loss", self.current_round * epochs + epoch)
            self.log_info(fl_ctx, f"round {self.current_round} epoch {epoch + 1}/{epochs}: loss {loss:.4f}")

    def export_params(self, fl_ctx: FLContext) -> Params:
        return bundle({"global": to_numpy(self.model.state_dict())})

    def persistent_state(self) -> Dict[str, Any]:
        return {**super().persistent_state(), "optimizer": self.optimizer.state_dict()}

    def load_persistent_state(self, state: Dict[str, Any]) -> None:
        super().load_persistent_state(state)
        self.optimizer.load_state_dict(state["optimizer"])
