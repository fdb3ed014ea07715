"""Deputy-Enhanced Transfer: stage transitions, per-stage losses and gradients, one local epoch; metrics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu
from torch import nn
from torch.utils.data import DataLoader

from medfl.common.metrics import accuracy, classification_metrics, macro_auc_ovr, macro_f1
from medfl.common.train import TrainingAborted
from medfl.prrfl.det import DetStage, decide_det_stage, det_local_epoch, det_losses, next_det_stage

START, RECOVER, EXCHANGE, SUBLIMATE = DetStage.START, DetStage.RECOVER, DetStage.EXCHANGE, DetStage.SUBLIMATE


@pytest.mark.parametrize(
    ("stage", "f1_deputy", "expected"),
    [
        (START, 99.0, RECOVER),  # every round starts with Recover, however good the deputy
        (RECOVER, 69.9, RECOVER),  # below alpha1 * f1_personal
        (RECOVER, 70.0, EXCHANGE),  # reaches alpha1
        (RECOVER, 95.0, EXCHANGE),  # cannot jump from Recover to Sublimate
        (EXCHANGE, 69.9, RECOVER),  # falls back below alpha1
        (EXCHANGE, 89.9, EXCHANGE),
        (EXCHANGE, 90.0, SUBLIMATE),  # reaches alpha2
        (SUBLIMATE, 95.0, SUBLIMATE),
        (SUBLIMATE, 80.0, EXCHANGE),  # below alpha2
        (SUBLIMATE, 50.0, RECOVER),  # below alpha1
    ],
)
def test_stage_transitions_follow_thresholds(stage, f1_deputy, expected):
    assert next_det_stage(stage, f1_deputy, 100.0) == expected


def test_stage_thresholds_are_arguments_and_nan_is_rejected():
    assert next_det_stage(RECOVER, 0.5, 1.0, alpha1=0.5) == EXCHANGE
    assert next_det_stage(EXCHANGE, 0.5, 1.0, alpha1=0.4, alpha2=0.5) == SUBLIMATE
    with pytest.raises(ValueError, match="finite"):
        next_det_stage(RECOVER, math.nan, 1.0)
    with pytest.raises(ValueError):
        next_det_stage(4, 1.0, 1.0)


def kl(student, teacher):
    """KL(softmax(teacher) || softmax(student)) written out, batch mean."""
    p_teacher = teacher.softmax(dim=1)
    return (p_teacher * (p_teacher.log() - student.log_softmax(dim=1))).sum(dim=1).mean()


@pytest.mark.parametrize(
    ("stage", "personal_has_kl", "deputy_has_kl"),
    [(RECOVER, False, True), (EXCHANGE, True, True), (SUBLIMATE, True, False)],
)
def test_losses_of_each_stage(stage, personal_has_kl, deputy_has_kl):
    torch.manual_seed(0)
    logits_p = torch.randn(6, 3, requires_grad=True)
    logits_d = torch.randn(6, 3, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    loss_p, loss_d = det_losses(logits_p, logits_d, targets, stage)

    expected_p = F.cross_entropy(logits_p, targets) + (kl(logits_p, logits_d) if personal_has_kl else 0.0)
    expected_d = F.cross_entropy(logits_d, targets) + (kl(logits_d, logits_p) if deputy_has_kl else 0.0)
    torch.testing.assert_close(loss_p, expected_p)
    torch.testing.assert_close(loss_d, expected_d)
    # teachers are detached: each loss only trains its own model
    assert torch.autograd.grad(loss_p, logits_d, retain_graph=True, allow_unused=True)[0] is None
    assert torch.autograd.grad(loss_d, logits_p, allow_unused=True)[0] is None


def test_losses_reject_start_stage():
    with pytest.raises(ValueError, match="START"):
        det_losses(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), START)


def tiny_loader(num_samples: int = 12, num_classes: int = 3) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(num_samples, 4, generator=generator)
    labels = torch.arange(num_samples) % num_classes
    items = [{"image": image, "label": label} for image, label in zip(images, labels)]
    return DataLoader(items, batch_size=5)


@pytest.mark.parametrize("stage", [RECOVER, EXCHANGE, SUBLIMATE])
def test_local_epoch_updates_both_models(stage):
    torch.manual_seed(1)
    personal, deputy = nn.Linear(4, 3), nn.Linear(4, 3)
    before_p, before_d = personal.weight.clone(), deputy.weight.clone()
    opt_p = torch.optim.SGD(personal.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(deputy.parameters(), lr=0.1)
    losses = det_local_epoch(personal, deputy, tiny_loader(), opt_p, opt_d, stage, "cpu")
    assert set(losses) == {"loss_personal", "loss_deputy"} and all(v > 0 for v in losses.values())
    assert not torch.equal(personal.weight, before_p) and not torch.equal(deputy.weight, before_d)


class FiredSignal:
    triggered = True


def test_local_epoch_stops_on_abort_and_on_non_finite_loss():
    personal, deputy = nn.Linear(4, 3), nn.Linear(4, 3)
    opt_p = torch.optim.SGD(personal.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(deputy.parameters(), lr=0.1)
    with pytest.raises(TrainingAborted):
        det_local_epoch(personal, deputy, tiny_loader(), opt_p, opt_d, RECOVER, "cpu", abort_signal=FiredSignal())
    with torch.no_grad():
        deputy.weight.fill_(math.inf)
    with pytest.raises(FloatingPointError, match="not finite"):
        det_local_epoch(personal, deputy, tiny_loader(), opt_p, opt_d, RECOVER, "cpu")


def test_decide_stage_from_models():
    personal, deputy = nn.Linear(4, 3), nn.Linear(4, 3)
    assert decide_det_stage(START, personal, deputy, tiny_loader(), "cpu") == RECOVER
    # identical models: equal F1, so Recover -> Exchange -> Sublimate
    deputy.load_state_dict(personal.state_dict())
    assert decide_det_stage(RECOVER, personal, deputy, tiny_loader(), "cpu") == EXCHANGE
    assert decide_det_stage(EXCHANGE, personal, deputy, tiny_loader(), "cpu") == SUBLIMATE


def test_macro_f1_and_accuracy_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    # F1: class 0: 2*1/(2+1+1)=0.5, class 1: 2*2/(4+1+0)=0.8, class 2: 2*1/(2+0+1)=2/3
    assert macro_f1(labels, preds) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert accuracy(labels, preds) == pytest.approx(4 / 6)
    # class 2 absent from labels and predictions: skipped; predicted-but-absent class counts as 0
    assert macro_f1(np.array([0, 1]), np.array([0, 1])) == 1.0
    assert macro_f1(np.array([0, 0]), np.array([0, 2])) == pytest.approx((2 / 3 + 0.0) / 2)


def test_macro_auc_matches_mann_whitney_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=40)
    scores = np.round(rng.random((40, 3)), 1)  # rounding creates ties
    expected = []
    for cls in range(3):
        positive = labels == cls
        u_stat = mannwhitneyu(scores[positive, cls], scores[~positive, cls]).statistic
        expected.append(u_stat / (positive.sum() * (~positive).sum()))
    assert macro_auc_ovr(labels, scores) == pytest.approx(np.mean(expected))


def test_macro_auc_with_absent_classes():
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    # class 2 never occurs in the labels: skipped, the mean runs over classes 0 and 1 (both perfectly ranked)
    assert macro_auc_ovr(np.array([0, 1, 0, 1]), probs) == 1.0
    assert math.isnan(macro_auc_ovr(np.array([1, 1, 1, 1]), probs))  # one class only: AUC undefined
    metrics = classification_metrics(np.array([0, 1, 0, 1]), probs)
    assert metrics == {"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0, "macro_auc": 1.0}
