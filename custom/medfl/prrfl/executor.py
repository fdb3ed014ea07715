"""PRR-FL clients on the dermoscopy federation: the DET learner and the FedAvg baseline with the same budget.

Both clients report, for what they received and again after local training, the validation metrics of
:func:`~medfl.common.metrics.classification_metrics` under ``<model>_<metric>`` keys. The received values stream to
TensorBoard as ``val/...`` at step ``r`` (the start of round ``r``, just after the communication) and the trained
values as ``val_trained/...`` at step ``r`` (the end of round ``r``, just before the communication), so the
retrogress of communication ``r -> r+1`` is ``val[r+1] - val_trained[r]`` (``result_stat/prrfl_dermoscopy_results.py``).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from medfl.common.classification import ClassificationExecutor, build_optimizer
from medfl.common.errors import DataError
from medfl.common.executor import RoundExecutor
from medfl.common.io import atomic_torch_save
from medfl.common.metrics import classification_metrics, predict_probabilities
from medfl.common.networks import build_network
from medfl.common.params import Params, bundle, to_numpy, unbundle

from . import networks  # noqa: F401  (registers vgg16_slim)
from .dataset import build_client_datasets
from .det import DetStage, decide_det_stage, det_local_epoch
from .pfa import shared_keys

DEPUTY = "deputy"
PERSONAL = "personal"
TRAINED_PREFIX = "val_trained"
# result meta: validation metrics after local training; task meta: the round whose personalised models are best
TRAINED_METRICS = "trained_metrics"
BEST_PERSONAL_ROUND = "best_personal_round"
BEST_PERSONAL_SCORE = "best_personal_score"

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


def personal_model_path(app_dir: str, kind: str) -> str:
    """Where a client keeps its personalised model: ``<app_dir>/{best,last}_personal_model.pt``."""
    return os.path.join(app_dir, f"{kind}_{PERSONAL}_model.pt")


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


def shared_params(model: nn.Module) -> Params:
    """The parameters that travel in PRR-FL: the model's state without BatchNorm (see `shared_keys`)."""
    keys = shared_keys(model)
    return {key: value for key, value in to_numpy(model.state_dict()).items() if key in keys}


def load_shared(model: nn.Module, params: Mapping[str, np.ndarray], site: str) -> None:
    """Load the shared (non-BatchNorm) parameters into ``model``; its BatchNorm state stays as it is."""
    expected = shared_keys(model)
    missing, unexpected = expected - set(params), set(params) - expected
    if missing or unexpected:
        raise DataError(f"the deputy parameters do not match the network: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]} (same 'network' on server and clients?)", site=site)
    state = model.state_dict()
    state.update({key: torch.as_tensor(np.asarray(value)).to(state[key].dtype) for key, value in params.items()})
    model.load_state_dict(state)


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


class DETExecutor(RoundExecutor):
    """PRR-FL client (Chen et al., MICCAI 2021, Sec. 2.3): Deputy-Enhanced Transfer.

    The client keeps a personalised model, which never leaves it, and a deputy, which the server aggregates with
    PFA. Per round: load the received deputy (BatchNorm excluded, the client keeps its own); validate both models;
    re-create both SGD optimizers at ``lr * lr_decay ** (round // lr_decay_rounds)``; for ``local_epochs`` epochs
    choose the DET stage from both models' train macro-F1 (Recover / Exchange / Sublimate, thresholds ``alpha1``,
    ``alpha2``; reset each round) and train both with that stage's losses; validate both again (sent to the server
    for the selection and streamed as ``val_trained/...``); send the deputy without BatchNorm.

    The personalised model is initialised from the first deputy received (round 0: the same for every client).
    ``<app_dir>/last_personal_model.pt`` is written after every round, ``best_personal_model.pt`` whenever the
    server reports that this round's personalised models have the best mean validation score of the selection
    window. Both hold ``{"state_dict", "round_number", "metrics"}`` (and ``score``, the clients' mean, for best).

    ``config_train.json`` keys: ``data_root``, ``image_size``, ``num_classes``, ``augment`` (see
    :func:`~medfl.prrfl.dataset.build_client_datasets`), ``network``, ``optimizer``, ``lr_decay``,
    ``lr_decay_rounds``, ``local_epochs``, ``batch_size``, ``alpha1``, ``alpha2``, ``seed``, ``device``.
    """

    def setup(self, fl_ctx: FLContext) -> None:
        self.datasets = build_client_datasets(self.config, self.site)
        batch_size = int(setting(self.config, "batch_size"))
        training = self.datasets["training"]
        # BatchNorm1d cannot train on a last batch of one sample; the FedAvg client drops it the same way
        self.train_loader = DataLoader(training, batch_size=batch_size, shuffle=True,
                                       drop_last=len(training) > batch_size)
        self.val_loader = DataLoader(self.datasets["validation"], batch_size=batch_size)
        network = self.config["network"]
        self.personal = build_network(network["name"], **network.get("args", {})).to(self.device)
        self.deputy = build_network(network["name"], **network.get("args", {})).to(self.device)
        self.personal_initialised = False
        self.trained_metrics: Dict[str, float] = {}

    def num_samples(self, split: str) -> int:
        return len(self.datasets[split])

    def load_payload(self, params: Params, fl_ctx: FLContext) -> None:
        received = unbundle(params)
        if DEPUTY not in received:
            raise DataError("the server sent no deputy parameters", site=self.site)
        if BEST_PERSONAL_ROUND in self.task_meta:
            self.save_best_personal(fl_ctx)
        load_shared(self.deputy, received[DEPUTY], self.site)
        if not self.personal_initialised:
            load_shared(self.personal, received[DEPUTY], self.site)
            self.personal_initialised = True

    def save_best_personal(self, fl_ctx: FLContext) -> None:
        """The server found the personalised models of the last round best: save ours as it still is."""
        round_number = int(self.task_meta[BEST_PERSONAL_ROUND])
        path = personal_model_path(self.app_dir, "best")
        self.save_personal(path, round_number, score=float(self.task_meta[BEST_PERSONAL_SCORE]))
        self.log_info(fl_ctx, f"saved the personalised model of round {round_number} as the best to {path}")

    def save_personal(self, path: str, round_number: int, **info) -> None:
        state = {key: value.detach().cpu() for key, value in self.personal.state_dict().items()}
        atomic_torch_save({"state_dict": state, "round_number": round_number, "metrics": self.trained_metrics,
                           **info}, path)

    def evaluate(self, split: str = "validation") -> Dict[str, float]:
        loader = split_loader(self, split)
        return {**model_metrics(self.personal, loader, self.device, PERSONAL),
                **model_metrics(self.deputy, loader, self.device, DEPUTY)}

    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        opt_personal = optimizer_for_round(self.personal.parameters(), self.config, self.current_round)
        opt_deputy = optimizer_for_round(self.deputy.parameters(), self.config, self.current_round)
        alpha1, alpha2 = float(setting(self.config, "alpha1")), float(setting(self.config, "alpha2"))
        epochs = int(setting(self.config, "local_epochs"))
        stage = DetStage.START
        for epoch in range(epochs):
            stage = decide_det_stage(stage, self.personal, self.deputy, self.train_loader, self.device, alpha1, alpha2)
            losses = det_local_epoch(self.personal, self.deputy, self.train_loader, opt_personal, opt_deputy, stage,
                                     self.device, abort_signal)
            step = self.current_round * epochs + epoch
            self.log_metrics({PERSONAL: losses["loss_personal"], DEPUTY: losses["loss_deputy"]}, "train_loss", step)
            self.log_metrics({"stage": int(stage)}, "det", step)
            self.log_info(fl_ctx, f"round {self.current_round} epoch {epoch + 1}/{epochs} {stage.name}: losses "
                                  f"personal {losses['loss_personal']:.4f}, deputy {losses['loss_deputy']:.4f}")
        self.trained_metrics = self.evaluate("validation")
        self.log_metrics(self.trained_metrics, TRAINED_PREFIX, self.current_round)
        self.save_personal(personal_model_path(self.app_dir, "last"), self.current_round)

    def result_meta(self, task_name: str) -> Dict[str, Any]:
        return {TRAINED_METRICS: self.trained_metrics} if task_name == self.train_task else {}

    def export_params(self, fl_ctx: FLContext) -> Params:
        return bundle({DEPUTY: shared_params(self.deputy)})
