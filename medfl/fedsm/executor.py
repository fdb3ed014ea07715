"""FedSM client: trains the global model, its personalised model and the selector on its own data."""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from medfl.common.errors import DataError
from medfl.common.networks import build_network
from medfl.common.params import (
    Params,
    adopt_numpy,
    bundle,
    load_numpy,
    release_tensors,
    tensor_layout,
    to_numpy,
    unbundle,
)
from medfl.common.settings import NetworkSpec, OptimizerSpec
from medfl.common.train import Batch, build_optimizer, evaluate_dice, predict_binary_mask, to_device, train_epoch
from medfl.federations.prostate2d.client import ProstateSegmentationExecutor, ProstateSettings

from . import networks  # noqa: F401  (registers the selector networks)
from .moments import (
    MOMENTS_SENT_PROP,
    SELECTOR_STATE_PROP,
    SYNCED_MOMENTS_PROP,
    load_adam_moments,
    release_adam_moments,
    zero_released_moments,
)
from .protocol import GLOBAL, PERSONAL_OF_LABEL, SELECT_THRESHOLD, SELECTOR, SITE_LABEL, SUPER_MODEL
from .super_model import super_model_predict


class SiteLabelLoss(torch.nn.Module):
    """Cross-entropy of the selector's logits against this client's site label (every image has it)."""

    def __init__(self, label: int):
        super().__init__()
        self.label = label

    def forward(self, logits: torch.Tensor, _mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, torch.full((logits.shape[0],), self.label, device=logits.device))


def accumulate_gradient(model: torch.nn.Module, batch: Batch, loss_fn, optimizer) -> torch.Tensor:
    """A step of :func:`~medfl.common.train.train_epoch` that only adds this batch's gradient (forward, backward,
    no optimizer step): the selector's full-batch epoch."""
    loss = loss_fn(model(batch["image"]), batch["label"])
    loss.backward()
    return loss.detach()


class FedSMSettings(ProstateSettings):
    """FedSM client's ``config_train.json``: the prostate client's keys and the selector's."""

    selector_network: NetworkSpec = Field(description=(
        "the selector (image -> site) network: vgg11 (the original's VGG-11 without batch norm) or selector_cnn"))
    selector_optimizer: OptimizerSpec = Field(description="the selector's optimizer (the original: Adam, lr 1e-3)")
    selector_epochs: int = Field(1, ge=1, description=(
        "selector epochs per round, each ONE optimizer step on the gradient summed over the epoch (the original: 1)"))


class FedSMExecutor(ProstateSegmentationExecutor):
    """FedSM client (Xu et al., CVPR 2022): segmentation models ``global`` and ``personal``, plus ``selector``.

    The server sends the bundle {global, this client's personalised model, selector} and this client's site
    label. Validation reports Dice of the received global and personalised models and the selector's accuracy
    at recognising this site. Each round trains the global model, then the personalised one (an Adam step per
    batch each), then the selector in the original's full-batch manner (``pt_fedsm.py local_train_select``): the
    gradients of every batch of an epoch are summed and the optimizer steps once per epoch, so with one selector
    epoch Adam's step count grows by exactly one a round. Settings: :class:`FedSMSettings`.

    The selector (VGG-11: 129 M parameters) is held once: its weights and Adam moments travel back as views of the
    model and the optimizer's state, not copies; once the result is sent they are released (the next task brings
    the server's), and the received weights and moments become the model's and the optimizer's storage without a
    copy; its Adam steps a chunk at a time (:class:`~medfl.common.chunked_adam.ChunkedAdam`: no temporaries the
    size of its 103 M-weight layer); the gradients are freed after each step.
    """

    Settings = FedSMSettings
    model_names = ("global", "personal")

    def setup(self, fl_ctx: FLContext) -> None:
        super().setup(fl_ctx)
        network = self.settings.selector_network
        self.selector = build_network(network.name, **network.args).to(self.device)
        self.selector_layout = tensor_layout(self.selector)
        self.selector_optimizer = build_optimizer(self.selector.parameters(), self.settings.selector_optimizer,
                                                  chunked=True)
        self.site_label = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.AFTER_SEND_TASK_RESULT and self.settings is not None and not self._setup_error:
            release_tensors(self.selector)  # sent; every task starts by loading the server's selector
            if fl_ctx.get_prop(MOMENTS_SENT_PROP):  # sent; the next training task brings the averaged ones
                release_adam_moments(self.selector, self.selector_optimizer)
        super().handle_event(event_type, fl_ctx)  # saves the client state: without the moments released above

    def persistent_state(self) -> Dict[str, Any]:
        """The segmentation optimizers' states and the selector's (its Adam steps; its moments unless they were
        sent, as the server's state holds their average then); the selector's weights come from the server."""
        return {**super().persistent_state(), "selector_optimizer": self.selector_optimizer.state_dict()}

    def load_persistent_state(self, state: Dict[str, Any]) -> None:
        super().load_persistent_state(state)
        self.selector_optimizer.load_state_dict(state["selector_optimizer"])

    def load_payload(self, params: Params, fl_ctx: FLContext) -> None:
        if SITE_LABEL not in self.task_meta:
            raise DataError("the server sent no site label for the selector", site=self.site)
        self.site_label = int(self.task_meta[SITE_LABEL])
        super().load_payload(params, fl_ctx)
        received = unbundle(params)
        if "selector" not in received:
            raise DataError("the server sent no selector parameters", site=self.site)
        try:
            adopt_numpy(self.selector, received["selector"], self.selector_layout)
        except KeyError as e:
            raise DataError(f"the selector the server sent does not fit selector_network: {e}", site=self.site) from None
        moments = fl_ctx.get_prop(SYNCED_MOMENTS_PROP)
        if moments:
            try:
                n = load_adam_moments(self.selector, self.selector_optimizer, moments)
            except ValueError as e:
                raise DataError(f"the server's selector Adam moments do not fit selector_network: {e}",
                                site=self.site) from None
            self.log_info(fl_ctx, f"loaded synced Adam moments for {n} selector parameters")
            fl_ctx.remove_prop(SYNCED_MOMENTS_PROP)
        else:
            zeroed = zero_released_moments(self.selector, self.selector_optimizer)
            if zeroed:
                self.log_warning(fl_ctx, f"the server sent no selector Adam moments back (another site sent none?): "
                                         f"the moments of {zeroed} selector parameters restart at zero")
        del received, moments
        params.clear()  # every array is in the models now: release the received ones (1.5 GB with VGG-11)
        fl_ctx.set_prop(SELECTOR_STATE_PROP, (self.selector, self.selector_optimizer), private=True, sticky=False)

    @torch.no_grad()
    def selector_accuracy(self, loader: DataLoader) -> float:
        """Share of images the selector assigns to this client's site."""
        self.selector.eval()
        correct = total = 0
        for batch in loader:
            logits = self.selector(to_device(batch, self.device)["image"])
            correct += int((logits.argmax(dim=1) == self.site_label).sum())
            total += logits.shape[0]
        return correct / max(total, 1)

    def evaluate(self, split: str = "validation") -> Dict[str, float]:
        metrics = super().evaluate(split)
        metrics["selector"] = self.selector_accuracy(self.val_loader)
        return metrics

    def train_selector_epoch(self, abort_signal: Signal) -> float:
        """One full-batch epoch: the site-label loss's gradients of every batch summed, then one optimizer step;
        return the mean loss."""
        self.selector_optimizer.zero_grad(set_to_none=True)
        loss = train_epoch(self.selector, self.train_loader, SiteLabelLoss(self.site_label), self.selector_optimizer,
                           self.device, step=accumulate_gradient, abort_signal=abort_signal)
        self.selector_optimizer.step()
        self.selector_optimizer.zero_grad(set_to_none=True)  # frees the gradients (0.5 GB with VGG-11)
        return loss

    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        super().train_round(abort_signal, fl_ctx)
        epochs = self.settings.selector_epochs
        for epoch in range(epochs):
            loss = self.train_selector_epoch(abort_signal)
            self.log_metrics({"selector": loss}, "train_loss", self.current_round * epochs + epoch)
            self.log_info(fl_ctx, f"round {self.current_round} selector epoch {epoch + 1}/{epochs} (one step): "
                                  f"loss {loss:.4f}")

    def cross_evaluate(self, models: Dict[str, Params], split: str, fl_ctx: FLContext) -> Dict[str, float]:
        """Dice on ``split`` of each plain model (global, personalised) and of the super model, which routes each
        image by the selector (threshold from the server) to a personalised model or the global model."""
        if SELECT_THRESHOLD not in self.task_meta:
            raise DataError("the server sent no select_threshold for the super model", site=self.site)
        loader = DataLoader(self.dataset(split), batch_size=self.settings.batch_size)
        segmentation = self.models[GLOBAL]
        scores = {}
        for name, payload in sorted(models.items()):
            parts = unbundle(payload)
            if GLOBAL not in parts:
                raise DataError(f"the cross-site model {name!r} holds no '{GLOBAL}' parameters", site=self.site)
            load_numpy(segmentation, parts[GLOBAL])
            predict = predict_binary_mask
            if name == SUPER_MODEL:
                predict = self.super_model(parts, float(self.task_meta[SELECT_THRESHOLD]))
            scores[name] = evaluate_dice(segmentation, loader, self.device, predict=predict)
        return scores

    def super_model(self, parts: Dict[str, Params], threshold: float):
        """The super model's prediction ``predict(global_model, image)`` from its parts (selector, personalised
        models by selector class)."""
        labels = sorted(int(key[len(PERSONAL_OF_LABEL):]) for key in parts if key.startswith(PERSONAL_OF_LABEL))
        if SELECTOR not in parts or labels != list(range(len(labels))) or not labels:
            raise DataError(f"the super model needs '{SELECTOR}' and personalised models for the classes 0 .. n-1, "
                            f"got {sorted(parts)}", site=self.site)
        try:  # the selector's own storage may have been released after the last result was sent
            adopt_numpy(self.selector, parts[SELECTOR], self.selector_layout)
        except KeyError as e:
            raise DataError(f"the cross-site selector does not fit selector_network: {e}", site=self.site) from None
        self.selector.eval()
        network = self.settings.network
        personal = []
        for label in labels:
            model = build_network(network.name, **network.args).to(self.device)
            load_numpy(model, parts[f"{PERSONAL_OF_LABEL}{label}"])
            personal.append(model.eval())
        return lambda global_model, image: super_model_predict(image, self.selector, global_model, personal, threshold)

    def export_params(self, fl_ctx: FLContext) -> Params:
        params = super().export_params(fl_ctx)
        # views, not copies: the server has them before the selector trains again
        params.update(bundle({"selector": to_numpy(self.selector.state_dict(), copy=False)}))
        return params
