"""Deputy-Enhanced Transfer (DET) of PRR-FL (Chen et al., MICCAI 2021, Sec. 2.3): Recover, Exchange, Sublimate.

Each client trains its personalized model (never shared) together with its deputy (the model that takes part
in PFA). At the start of every local epoch the stage is chosen from the train macro-F1 of both models; the stage
decides which model distils into which (KL at temperature 1 towards the detached teacher, weight 1):

=========  ==========================  ==========================
stage      personalized loss           deputy loss
=========  ==========================  ==========================
Recover    CE                          CE + KL(deputy <- personal)
Exchange   CE + KL(personal <- deputy) CE + KL(deputy <- personal)
Sublimate  CE + KL(personal <- deputy) CE
=========  ==========================  ==========================
"""

from __future__ import annotations

import math
from enum import IntEnum

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from nvflare.apis.signal import Signal

from medfl.common.metrics import macro_f1, predict_probabilities
from medfl.common.train import TrainingAborted, batch_ids

__all__ = ["DetStage", "decide_det_stage", "det_local_epoch", "det_losses", "distillation_kl", "next_det_stage"]


class DetStage(IntEnum):
    """DET stages; ``START`` marks the start of a round (the stage is reset every round)."""

    START = 0
    RECOVER = 1
    EXCHANGE = 2
    SUBLIMATE = 3


def next_det_stage(
    stage: int, f1_deputy: float, f1_personal: float, alpha1: float = 0.7, alpha2: float = 0.9
) -> DetStage:
    """Stage of the coming local epoch from the current one and both models' train macro-F1 (any common scale).

    * ``START`` or ``f1_deputy < alpha1 * f1_personal``: Recover (so every round begins with Recover);
    * from Recover, once ``f1_deputy >= alpha1 * f1_personal``: Exchange (never straight to Sublimate);
    * from Exchange or Sublimate: Sublimate if ``f1_deputy >= alpha2 * f1_personal``, else Exchange.

    The original's fourth "logic error" stage is only reachable with NaN F1; NaN raises ValueError here.
    """
    stage = DetStage(stage)
    if math.isnan(f1_deputy) or math.isnan(f1_personal):
        raise ValueError(f"DET stage needs finite F1 scores, got deputy {f1_deputy}, personal {f1_personal}")
    if stage == DetStage.START or f1_deputy < alpha1 * f1_personal:
        return DetStage.RECOVER
    if stage == DetStage.RECOVER or f1_deputy < alpha2 * f1_personal:
        return DetStage.EXCHANGE
    return DetStage.SUBLIMATE


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` at temperature 1, batch mean; no gradient to the teacher."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1), reduction="batchmean"
    )


def det_losses(
    logits_personal: torch.Tensor, logits_deputy: torch.Tensor, targets: torch.Tensor, stage: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_personal, loss_deputy)`` of one batch in ``stage`` (see the module table); logits ``(B, classes)``."""
    stage = DetStage(stage)
    if stage == DetStage.START:
        raise ValueError("DET losses need a training stage (Recover, Exchange or Sublimate), got START")
    loss_personal = F.cross_entropy(logits_personal, targets)
    loss_deputy = F.cross_entropy(logits_deputy, targets)
    if stage in (DetStage.EXCHANGE, DetStage.SUBLIMATE):
        loss_personal = loss_personal + distillation_kl(logits_personal, logits_deputy)
    if stage in (DetStage.RECOVER, DetStage.EXCHANGE):
        loss_deputy = loss_deputy + distillation_kl(logits_deputy, logits_personal)
    return loss_personal, loss_deputy


def decide_det_stage(
    stage: int,
    personal: nn.Module,
    deputy: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    alpha1: float = 0.7,
    alpha2: float = 0.9,
) -> DetStage:
    """`next_det_stage` from both models' macro-F1 on ``loader`` (eval mode, no grad).

    The original evaluates on the augmented train loader; that costs two extra inference passes per epoch.
    """
    probs_deputy, labels = predict_probabilities(deputy, loader, device)
    probs_personal, _ = predict_probabilities(personal, loader, device)
    f1_deputy = macro_f1(labels, probs_deputy.argmax(axis=1))
    f1_personal = macro_f1(labels, probs_personal.argmax(axis=1))
    return next_det_stage(stage, f1_deputy, f1_personal, alpha1, alpha2)


def det_local_epoch(
    personal: nn.Module,
    deputy: nn.Module,
    loader: DataLoader,
    opt_personal: Optimizer,
    opt_deputy: Optimizer,
    stage: int,
    device: torch.device | str,
    abort_signal: Signal | None = None,
) -> dict[str, float]:
    """One local epoch of DET in ``stage``: both models in train mode, one step of each optimizer per batch.

    ``loader`` yields ``{"image": (B, C, H, W), "label": (B,)}`` batches. Returns the sample-weighted mean losses
    ``{"loss_personal", "loss_deputy"}`` of the epoch. Raises `TrainingAborted` when ``abort_signal`` fires and
    FloatingPointError on a non-finite loss.
    """
    personal.train().to(device)
    deputy.train().to(device)
    totals = {"loss_personal": 0.0, "loss_deputy": 0.0}
    num_samples = 0
    for batch in loader:
        if abort_signal is not None and abort_signal.triggered:
            raise TrainingAborted("abort signal received")
        images, targets = batch["image"].to(device).float(), batch["label"].to(device).long()
        opt_personal.zero_grad()
        opt_deputy.zero_grad()
        loss_personal, loss_deputy = det_losses(personal(images), deputy(images), targets, stage)
        if not (torch.isfinite(loss_personal) and torch.isfinite(loss_deputy)):
            raise FloatingPointError(f"DET loss is not finite (personalised {loss_personal.item()}, deputy "
                                     f"{loss_deputy.item()}){batch_ids(batch)}: check the learning rate and the "
                                     "input data")
        loss_personal.backward()
        loss_deputy.backward()
        opt_personal.step()
        opt_deputy.step()
        totals["loss_personal"] += loss_personal.item() * targets.numel()
        totals["loss_deputy"] += loss_deputy.item() * targets.numel()
        num_samples += targets.numel()
    if num_samples == 0:
        raise ValueError("DET local epoch got an empty loader")
    return {name: total / num_samples for name, total in totals.items()}
