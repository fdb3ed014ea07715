"""The FedMAS client (§3.4, §3.5 (a)-(c)) on the Fed-ISIC2019 baseline client."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Dict, Literal, Optional

import torch
from pydantic import Field

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from medfl.common.errors import DataError
from medfl.common.params import Params
from medfl.common.settings import Settings
from medfl.common.train import TrainingAborted, to_device
from medfl.federations.isic2019.client import ISIC2019Settings, SkinLesionExecutor

from .aggregation import canonical_method, robust_factor
from .losses import DEFAULT_FREE_U, ClassDivergence, FedMASLoss, prior_divergence
from .networks import FreeHead  # registers free_head_resnet
from .prior import checkpoint_sha256, load_moco_prior
from .protocol import AGGREGATION, PRIOR_SHA256, ROBUST_FACTOR


class FedMASOptions(Settings):
    """What FedMAS adds to a client's ``config_train.json``."""

    prior_checkpoint: str = Field(description="the frozen MoCo-v2 prior (checkpoint file); DATASET_ROOT allowed")
    free_u: float = Field(DEFAULT_FREE_U, ge=0, description="weight of the prior-alignment term of the local loss")
    prior_bn_quirk: bool = Field(False, description=(
        "run the first D_pre pass with the prior's batch statistics, overwriting its BN statistics, as the "
        "original code does by accident in round 0 (the paper describes a frozen prior)"))


class FedMASSettings(FedMASOptions, ISIC2019Settings):
    """FedMAS client on Fed-ISIC2019: the federation's keys and FedMAS's (Balanced Softmax only)."""

    loss: Literal["bsm"] = Field("bsm", description="FedMAS trains with Balanced Softmax")


class FedMASExecutor(SkinLesionExecutor):
    """FedMAS client (§3.4, §3.5 (a)-(c)) with a frozen MoCo-v2 prior h and a :class:`FreeHead` network
    (``free_head_resnet`` in the original's setting).

    Per round, with the received global model: unless the server aggregates with ``avg`` (it says which
    in the payload meta), one pass over the training loader in eval mode gives D_pre per class; local training
    minimises ``BSM(z1) + BSM(z2) + free_u * mean(d)``, ``d = 2 - 2 cos(p, h(x))``, accumulating D_tr; the
    robust factor r_k (``mas_inv``: from 1/D_tr) goes back in the meta with the sample count and the prior's
    SHA-256 (the server checks that every client holds the same prior).

    Settings: :class:`FedMASSettings` (``prior_bn_quirk``: §3.3's accidental BN update of the original code).
    """

    Settings = FedMASSettings

    def setup(self, fl_ctx: FLContext) -> None:
        super().setup(fl_ctx)
        if not isinstance(self.model, FreeHead):
            raise ValueError(f"FedMAS needs a network with the projector head of §3.2 (e.g. 'free_head_resnet'), "
                             f"got {self.settings.network.name!r}")
        path = self.settings.path("prior_checkpoint", self.site)
        try:
            self.prior = load_moco_prior(path).to(self.device)
        except DataError as e:
            raise DataError(e.problem, e.path, self.site) from None
        if self.prior.out_features != self.model.prior_dim:
            raise DataError(f"the prior gives {self.prior.out_features}-d features but network.args.prior_dim is "
                            f"{self.model.prior_dim}: set prior_dim to {self.prior.out_features}", path, self.site)
        self.prior_sha256 = checkpoint_sha256(path)
        self.prior_bn_quirk = self.settings.prior_bn_quirk
        self.prior_bn_updated = False
        self.d_tr: Optional[ClassDivergence] = None

    def build_loss(self) -> Callable:
        return FedMASLoss(self.class_counts, self.settings.free_u).to(self.device)

    def load_payload(self, params: Params, fl_ctx: FLContext) -> None:
        super().load_payload(params, fl_ctx)
        self.aggregation = canonical_method(self.task_meta.get(AGGREGATION, "avg"))

    def prior_features(self, images: torch.Tensor) -> torch.Tensor:
        """h(x) of a batch the model sees; a client whose inputs are normalised otherwise than the prior's
        pre-training images converts them here."""
        return self.prior(images)

    @torch.no_grad()
    def divergence_before_training(self, abort_signal: Signal) -> ClassDivergence:
        """D_pre (§3.5 (a)): one pass over the training loader with the received model in eval mode."""
        self.model.eval()
        d_pre = ClassDivergence(self.class_counts)
        batch_statistics = self.prior_bn_quirk and not self.prior_bn_updated
        with self.prior.batch_statistics() if batch_statistics else nullcontext():
            for batch in self.train_loader:
                if abort_signal.triggered:
                    raise TrainingAborted("abort signal received")
                batch = to_device(batch, self.device)
                _, _, p, _ = self.model.heads(batch["image"])
                d_pre.update(prior_divergence(p, self.prior_features(batch["image"])), batch["label"])
        self.prior_bn_updated |= batch_statistics
        return d_pre

    def train_step(self, model: torch.nn.Module, batch: Dict[str, torch.Tensor], loss_fn: Callable,
                   optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """One step of §3.4; the batch's divergences (at the pre-step weights) are added to D_tr."""
        optimizer.zero_grad(set_to_none=True)
        images, labels = batch["image"], batch["label"]
        _, z1, p, z2 = model.heads(images)
        loss, d = loss_fn(z1, p, z2, self.prior_features(images), labels)
        self.d_tr.update(d, labels)
        self.apply_gradients(loss, model, optimizer)
        return loss.detach()

    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        d_pre = None if self.aggregation == "avg" else self.divergence_before_training(abort_signal)
        self.d_tr = ClassDivergence(self.class_counts)
        super().train_round(abort_signal, fl_ctx)
        if d_pre is None:
            return
        try:
            factor = robust_factor(d_pre.compute(), self.d_tr.compute(), inverse=self.aggregation == "mas_inv")
        except ValueError as e:
            raise DataError(f"cannot compute the robust factor: {e}", site=self.site) from None
        self.report[ROBUST_FACTOR] = factor
        self.log_metrics({"robust_factor": factor}, "fedmas", self.current_round)
        self.log_info(fl_ctx, f"round {self.current_round}: robust factor r_k = {factor:.6f} ({self.aggregation})")

    def result_meta(self, task_name: str) -> Dict[str, Any]:
        return {**super().result_meta(task_name), PRIOR_SHA256: self.prior_sha256}

    def persistent_state(self) -> Dict[str, Any]:
        """The optimizer and, for ``prior_bn_quirk``, whether the prior's BN statistics were overwritten and their
        values (the prior's weights stay the checkpoint's)."""
        buffers = {name: buffer for name, buffer in self.prior.named_buffers()}
        return {**super().persistent_state(), "prior_bn_updated": self.prior_bn_updated, "prior_buffers": buffers}

    def load_persistent_state(self, state: Dict[str, Any]) -> None:
        super().load_persistent_state(state)
        with torch.no_grad():
            for name, buffer in self.prior.named_buffers():
                buffer.copy_(state["prior_buffers"][name])
        self.prior_bn_updated = bool(state["prior_bn_updated"])
