"""PRR-FL client on the dermoscopy federation: the DET learner (personalised model + deputy).

It reports its metrics as the federation's client does (:mod:`medfl.federations.dermoscopy.client`), for the
personalised model and the deputy.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Literal, Mapping, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from medfl.common.classification import drops_last_batch
from medfl.common.errors import DataError
from medfl.common.executor import RoundExecutor
from medfl.common.io import atomic_torch_save
from medfl.common.networks import build_network
from medfl.common.params import Params, bundle, load_numpy, to_numpy, unbundle
from medfl.common.train import train_epoch
from medfl.federations.dermoscopy.client import (
    TRAINED_PREFIX,
    DermoscopySettings,
    model_metrics,
    optimizer_for_round,
    split_loader,
)
from medfl.federations.dermoscopy.data import build_client_datasets

from .det import DetStage, decide_det_stage, det_local_epoch
from .pfa import shared_keys, shared_params
from .protocol import (
    BEST_PERSONAL_ROUND,
    BEST_PERSONAL_SCORE,
    DEPUTY,
    PERSONAL,
    SUBMIT_PERSONAL_TASK,
    TRAINED_METRICS,
)


def personal_model_path(app_dir: str, kind: str) -> str:
    """Where a client keeps its personalised model: ``<app_dir>/{best,last}_personal_model.pt``."""
    return os.path.join(app_dir, f"{kind}_{PERSONAL}_model.pt")


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


class DETSettings(DermoscopySettings):
    """PRR-FL client's ``config_train.json``: the dermoscopy keys, DET's stage thresholds and the ablation switch."""

    alpha1: float = Field(0.7, gt=0, le=1, description="Recover -> Exchange when F1_deputy >= alpha1 * F1_personal")
    alpha2: float = Field(0.9, gt=0, le=1, description="Exchange -> Sublimate when F1_deputy >= alpha2 * F1_personal")
    transfer: Literal["det", "none"] = Field("det", description=(
        "det: Deputy-Enhanced Transfer between the personalised model and the deputy (the original); none: the "
        "ablation 'PRR-FL without DET': only the received deputy trains, with cross-entropy, and the personalised "
        "model is that locally trained deputy (alpha1 and alpha2 are then unused)"))


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

    Cross-site evaluation (only when the server asks for it): on ``submit_task`` the client sends its personalised
    model as it is now, BatchNorm included (the one time it leaves the site), and scores every site's personalised
    model on its own data.

    Ablation (``transfer: "none"``, PRR-FL without DET): DET is the only link between the two models, so without it
    the personalised model is the deputy itself, trained locally: each round the client trains the received deputy
    (its own BatchNorm kept) for ``local_epochs`` epochs with cross-entropy alone (one SGD optimizer, the same
    schedule), then copies it, BatchNorm included, into the personalised model; validation, selection, the saved
    personalised models and the cross-site evaluation are as above. With the server's PFA this is a personalised
    FL of PFA alone (FedBN with PFA in place of the mean).

    Settings: :class:`DETSettings`.
    """

    Settings = DETSettings

    def __init__(self, submit_task: str = SUBMIT_PERSONAL_TASK, **kwargs):
        super().__init__(**kwargs)
        self.submit_task = submit_task

    def task_names(self) -> List[str]:
        return [*super().task_names(), self.submit_task]

    def score_name(self) -> str:
        return self.settings.val_metric

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != self.submit_task:
            return super().execute(task_name, shareable, fl_ctx, abort_signal)
        if self._setup_error or not self.personal_initialised:
            self.log_error(fl_ctx, f"cannot send a personalised model: {self._setup_error or 'none trained yet'}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        self.log_info(fl_ctx, "sending the personalised model for the cross-site evaluation")
        return FLModelUtils.to_shareable(FLModel(params=bundle({PERSONAL: to_numpy(self.personal.state_dict())})))

    def cross_evaluate(self, models: Dict[str, Params], split: str, fl_ctx: FLContext) -> Dict[str, float]:
        """The ``val_metric`` on ``split`` of each site's personalised model (its full state, BatchNorm included)."""
        network = self.settings.network
        model = build_network(network.name, **network.args).to(self.device)
        loader = split_loader(self, split)
        scores = {}
        for name, payload in sorted(models.items()):
            parts = unbundle(payload)
            if PERSONAL not in parts:
                raise DataError(f"the cross-site model {name!r} holds no '{PERSONAL}' parameters", site=self.site)
            load_numpy(model, parts[PERSONAL])
            scores[name] = model_metrics(model, loader, self.device, PERSONAL)[f"{PERSONAL}_{self.score_name()}"]
        return scores

    def setup(self, fl_ctx: FLContext) -> None:
        self.datasets = build_client_datasets(self.settings, self.site)
        batch_size = self.settings.batch_size
        training = self.datasets["training"]
        network = self.settings.network
        self.personal = build_network(network.name, **network.args).to(self.device)
        self.deputy = build_network(network.name, **network.args).to(self.device)
        # the last batch is kept (drop_last false, the original's), unless it is one sample under BatchNorm1d
        drop = drops_last_batch(len(training), batch_size, self.settings.drop_last, self.personal)
        self.train_loader = DataLoader(training, batch_size=batch_size, shuffle=True, drop_last=drop)
        self.val_loader = DataLoader(self.datasets["validation"], batch_size=batch_size)
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
        """``local_epochs`` epochs of DET (or of the deputy alone, ``transfer: "none"``), then validate both models
        and save the personalised model as the round's last."""
        epochs = self.settings.local_epochs
        local_epochs = self.det_epochs if self.settings.transfer == "det" else self.deputy_epochs
        for epoch, (stage, losses) in enumerate(local_epochs(abort_signal)):
            step = self.current_round * epochs + epoch
            self.log_metrics(losses, "train_loss", step)
            self.log_info(fl_ctx, f"round {self.current_round} epoch {epoch + 1}/{epochs} {stage}: losses "
                                  + ", ".join(f"{model} {loss:.4f}" for model, loss in losses.items()))
        self.trained_metrics = self.evaluate("validation")
        self.log_metrics(self.trained_metrics, TRAINED_PREFIX, self.current_round)
        self.save_personal(personal_model_path(self.app_dir, "last"), self.current_round)

    def det_epochs(self, abort_signal: Signal) -> Iterator[Tuple[str, Dict[str, float]]]:
        """DET (Sec. 2.3), one ``(stage name, {model: loss})`` per local epoch: both SGD optimizers re-created at
        the round's rate, the stage reset and then chosen per epoch from both models' train macro-F1 (streamed as
        ``det/stage``), both models trained with that stage's losses."""
        opt_personal = optimizer_for_round(self.personal.parameters(), self.settings, self.current_round)
        opt_deputy = optimizer_for_round(self.deputy.parameters(), self.settings, self.current_round)
        alpha1, alpha2 = self.settings.alpha1, self.settings.alpha2
        stage = DetStage.START
        for epoch in range(self.settings.local_epochs):
            stage = decide_det_stage(stage, self.personal, self.deputy, self.train_loader, self.device, alpha1, alpha2)
            losses = det_local_epoch(self.personal, self.deputy, self.train_loader, opt_personal, opt_deputy, stage,
                                     self.device, abort_signal)
            self.log_metrics({"stage": int(stage)}, "det", self.current_round * self.settings.local_epochs + epoch)
            yield stage.name, {PERSONAL: losses["loss_personal"], DEPUTY: losses["loss_deputy"]}

    def deputy_epochs(self, abort_signal: Signal) -> Iterator[Tuple[str, Dict[str, float]]]:
        """The ablation without DET, one ``("CE", {"deputy": loss})`` per local epoch: the deputy alone trains with
        cross-entropy (its SGD optimizer re-created at the round's rate); after the last epoch the personalised
        model becomes a copy of it."""
        optimizer = optimizer_for_round(self.deputy.parameters(), self.settings, self.current_round)
        for _ in range(self.settings.local_epochs):
            yield "CE", {DEPUTY: train_epoch(self.deputy, self.train_loader, F.cross_entropy, optimizer, self.device,
                                             abort_signal=abort_signal)}
        self.personal.load_state_dict(self.deputy.state_dict())

    def result_meta(self, task_name: str) -> Dict[str, Any]:
        return {TRAINED_METRICS: self.trained_metrics} if task_name == self.train_task else {}

    def persistent_state(self) -> Dict[str, Any]:
        """The personalised model, the deputy (its BatchNorm never travels) and the last round's trained metrics
        (saved with the best personalised model); the optimizers are new every round."""
        return {**super().persistent_state(), PERSONAL: self.personal.state_dict(), DEPUTY: self.deputy.state_dict(),
                "personal_initialised": self.personal_initialised, "trained_metrics": self.trained_metrics}

    def load_persistent_state(self, state: Dict[str, Any]) -> None:
        super().load_persistent_state(state)
        self.personal.load_state_dict(state[PERSONAL])
        self.deputy.load_state_dict(state[DEPUTY])
        self.personal_initialised = bool(state["personal_initialised"])
        self.trained_metrics = dict(state["trained_metrics"])

    def export_params(self, fl_ctx: FLContext) -> Params:
        return bundle({DEPUTY: shared_params(self.deputy)})
