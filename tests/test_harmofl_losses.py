"""HarmoFL prostate loss and metric: MONAI objects equal the released JointLoss and dice_coef formulas."""

import torch
import torch.nn.functional as F

from medfl.harmofl.losses import harmofl_dice_metric, harmofl_segmentation_loss

SMOOTH = 1e-5


def released_joint_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(CE + batch-global soft Dice loss over both channels) / 2, written from the formula."""
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(labels[:, 0], logits.shape[1]).permute(0, 3, 1, 2).to(probs)
    dims = (0, 2, 3)
    dice = (2 * (probs * onehot).sum(dims) + SMOOTH) / (probs.sum(dims) + onehot.sum(dims) + SMOOTH)
    return (F.cross_entropy(logits, labels[:, 0]) + (1 - dice.mean())) / 2


def released_dice_coef(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over channels (background included) of the batch mean of per-sample hard Dice."""
    classes = logits.shape[1]
    pred = F.one_hot(logits.argmax(dim=1), classes).permute(0, 3, 1, 2).double()
    gt = F.one_hot(labels[:, 0], classes).permute(0, 3, 1, 2).double()
    per_sample = 2 * (pred * gt).sum((2, 3)) / (pred.sum((2, 3)) + gt.sum((2, 3)) + SMOOTH)
    return per_sample.mean(0).mean()


def test_dice_ce_equals_released_joint_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 12, 10, dtype=torch.float64)
    labels = (torch.rand(3, 1, 12, 10) > 0.7).long()
    torch.testing.assert_close(harmofl_segmentation_loss()(logits, labels), released_joint_loss(logits, labels))


def test_dice_metric_equals_released_dice_coef():
    torch.manual_seed(1)
    logits = torch.randn(4, 2, 16, 16)
    labels = (torch.rand(4, 1, 16, 16) > 0.6).long()
    pred = F.one_hot(logits.argmax(dim=1), 2).permute(0, 3, 1, 2)
    gt = F.one_hot(labels[:, 0], 2).permute(0, 3, 1, 2)
    metric = harmofl_dice_metric()
    metric(y_pred=pred, y=gt)
    torch.testing.assert_close(metric.aggregate().item(), released_dice_coef(logits, labels).item(), atol=1e-5, rtol=0)
