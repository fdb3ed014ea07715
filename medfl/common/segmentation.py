"""Client template for 2D binary segmentation: a named network, Dice loss, Adam, Dice validation.

The executor holds named models (``{"global": UNet}`` for FedAvg); the payload carries them bundled under
their names (see :mod:`medfl.common.params`). Each model has its own Adam optimizer whose state persists
across rounds. A federation provides the data (:meth:`SegmentationExecutor.build_split`); FedSM extends the
prostate client with a personalised model and a selector.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Dict

import torch
from monai.losses import DiceLoss
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from .errors import DataError
from .executor import RoundExecutor
from .networks import build_network
from .params import Params, bundle, load_numpy, to_numpy, unbundle
from .train import build_optimizer, evaluate_dice, train_epoch


class SegmentationExecutor(RoundExecutor):
    """FedAvg client for 2D segmentation: validates the received global model (Dice), trains it locally.

    Settings: :class:`~medfl.common.settings.ClientSettings` and the federation's data keys (:meth:`build_split`).
    Every model has its own optimizer of the ``optimizer`` setting, kept across rounds.
    """

    model_names = ("global",)

    @abstractmethod
    def build_split(self, split: str) -> Dataset:
        """The ``{"image", "label"}`` dataset of ``split`` (``training`` augmented where the federation does)."""

    def setup(self, fl_ctx: FLContext) -> None:
        self.datasets = {split: self.build_split(split) for split in ("training", "validation")}
        batch_size = self.settings.batch_size
        self.train_loader = DataLoader(self.datasets["training"], batch_size=batch_size, shuffle=True)
        self.val_loader = DataLoader(self.datasets["validation"], batch_size=batch_size)
        self.loss_fn = DiceLoss(sigmoid=True)
        self.models = {name: self.build_model(name).to(self.device) for name in self.model_names}
        self.optimizers = {name: build_optimizer(model.parameters(), self.settings.optimizer)
                           for name, model in self.models.items()}

    def build_model(self, name: str) -> torch.nn.Module:
        return build_network(self.settings.network.name, **self.settings.network.args)

    def score_name(self) -> str:
        return "dice"

    def num_samples(self, split: str) -> int:
        return len(self.datasets[split])

    def load_payload(self, params: Params, fl_ctx: FLContext) -> None:
        received = unbundle(params)
        missing = set(self.models) - set(received)
        if missing:
            raise DataError(f"the server sent no parameters for {sorted(missing)}", site=self.site)
        for name, model in self.models.items():
            load_numpy(model, received[name])

    def evaluate(self, split: str = "validation") -> Dict[str, float]:
        loader = self.val_loader if split == "validation" else DataLoader(self.datasets[split])
        return {name: evaluate_dice(model, loader, self.device) for name, model in self.models.items()}

    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        epochs = self.settings.local_epochs
        for name, model in self.models.items():
            for epoch in range(epochs):
                loss = train_epoch(model, self.train_loader, self.loss_fn, self.optimizers[name], self.device,
                                   step=self.train_step, abort_signal=abort_signal)
                step = self.current_round * epochs + epoch
                self.log_metrics({name: loss}, "train_loss", step)
                self.log_info(fl_ctx, f"round {self.current_round} {name} epoch {epoch + 1}/{epochs}: loss {loss:.4f}")

    def export_params(self, fl_ctx: FLContext) -> Params:
        return bundle({name: to_numpy(model.state_dict()) for name, model in self.models.items()})

    def persistent_state(self) -> Dict[str, Any]:
        optimizers = {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}
        return {**super().persistent_state(), "optimizers": optimizers}

    def load_persistent_state(self, state: Dict[str, Any]) -> None:
        super().load_persistent_state(state)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
