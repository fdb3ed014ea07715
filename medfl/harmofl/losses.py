"""HarmoFL prostate loss and metric, as MONAI objects (ALGORITHMS.md §1.7).

The released ``JointLoss`` is ``(CE + DiceLoss) / 2`` where
``DiceLoss = 1 - mean_c (2 sum(p_c g_c) + s) / (sum(p_c) + sum(g_c) + s)`` over softmax probabilities ``p``
and one-hot labels ``g``, both channels (background included), sums over the whole batch, ``s = 1e-5``.
Its reported Dice (``dice_coef``) averages per-sample hard Dice over the batch and over both channels,
background included.
"""

from __future__ import annotations

from typing import Dict, Iterable

import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from medfl.common.train import Batch, to_device

DICE_WEIGHT = 0.5
CE_WEIGHT = 0.5
DICE_SMOOTH = 1e-5


def harmofl_segmentation_loss(
    dice_weight: float = DICE_WEIGHT, ce_weight: float = CE_WEIGHT, smooth: float = DICE_SMOOTH
) -> DiceCELoss:
    """The released ``JointLoss`` as MONAI ``DiceCELoss``.

    Input: logits ``(B, C, H, W)``; target: class indices ``(B, 1, H, W)``. Returns a scalar.
    """
    return DiceCELoss(
        include_background=True,
        to_onehot_y=True,
        softmax=True,
        batch=True,
        lambda_dice=dice_weight,
        lambda_ce=ce_weight,
        smooth_nr=smooth,
        smooth_dr=smooth,
    )


def harmofl_dice_metric() -> DiceMetric:
    """The released ``dice_coef`` (background included) as MONAI ``DiceMetric``.

    Feed it one-hot argmax predictions and one-hot labels ``(B, C, H, W)``; ``aggregate()`` gives the mean
    over samples and channels. Two small differences from the released code: no ``1e-5`` in the denominator
    (negligible for non-empty masks, and every prostate slice the released loader keeps has one), and one
    mean over all samples instead of a mean of per-batch means (equal when all batches have one size).
    """
    return DiceMetric(include_background=True, reduction="mean")


@torch.no_grad()
def segmentation_dice_scores(model: torch.nn.Module, loader: Iterable[Batch], device: torch.device) -> Dict[str, float]:
    """Dice of a softmax segmentation network over ``loader`` (``{"image", "label": (B, 1, H, W) class ids}``).

    Returns ``dice_bg_fg``, the released metric (mean over background and foreground classes, see
    :func:`harmofl_dice_metric`), and ``dice_fg``, the mean over the foreground classes only (the prostate
    Dice usually reported). Both are means over samples of per-sample hard (argmax) Dice. The model is left
    in eval mode; the released networks' BatchNorm uses batch statistics there, so scores depend on the
    loader's batch size.
    """
    model.eval()
    metrics = {"dice_bg_fg": harmofl_dice_metric(), "dice_fg": DiceMetric(include_background=False, reduction="mean")}
    for batch in loader:
        batch = to_device(batch, device)
        logits = model(batch["image"])
        num_classes = logits.shape[1]
        prediction = one_hot(logits.argmax(dim=1, keepdim=True), num_classes)
        target = one_hot(batch["label"].long(), num_classes)
        for metric in metrics.values():
            metric(y_pred=prediction, y=target)
    return {name: float(metric.aggregate().item()) for name, metric in metrics.items()}
