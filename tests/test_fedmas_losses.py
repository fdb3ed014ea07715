"""FedMAS local objective (§3.4) and per-class divergence accumulators (§3.5 (a), (b))."""

import math

import pytest
import torch
import torch.nn.functional as F

from medfl.common.losses import BalancedSoftmaxLoss
from medfl.fedmas.losses import ClassDivergence, FedMASLoss, prior_divergence


def test_bsm_equals_cross_entropy_for_equal_class_counts():
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 2])
    assert torch.allclose(BalancedSoftmaxLoss([7, 7, 7, 7])(logits, target), F.cross_entropy(logits, target))


def test_bsm_shifts_logits_by_log_class_prior():
    counts = torch.tensor([1.0, 2.0, 5.0])
    logits, target = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 1])
    expected = F.cross_entropy(logits + torch.log(counts / counts.sum()), target)
    assert torch.allclose(BalancedSoftmaxLoss(counts)(logits, target), expected)
    assert not torch.allclose(BalancedSoftmaxLoss(counts)(logits, target), F.cross_entropy(logits, target))


def test_bsm_masks_absent_classes_without_nan():
    loss_fn = BalancedSoftmaxLoss([10, 0, 5])
    logits = torch.randn(4, 3, requires_grad=True)
    loss = loss_fn(logits, torch.tensor([0, 2, 0, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert math.isclose(loss_fn.log_prior()[1].item(), math.log(1e-12), rel_tol=1e-6)


def test_bsm_counts_are_a_buffer_and_checked():
    loss_fn = BalancedSoftmaxLoss([1, 2])
    assert "class_counts" in dict(loss_fn.named_buffers())
    with pytest.raises(ValueError, match="3 classes, the class counts 2"):
        loss_fn(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        BalancedSoftmaxLoss([0, 0])


def test_divergence_is_0_for_aligned_2_for_orthogonal_4_for_opposite():
    p = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0], [1.0, -1.0, 0.5]])
    aligned, orthogonal, opposite = 5 * p, torch.tensor([[0.0, 0.0, 0.0]] * 3), -0.1 * p
    orthogonal[0] = torch.tensor([3.0, 0.0, -1.0])
    assert torch.allclose(prior_divergence(p, aligned), torch.zeros(3), atol=1e-6)
    assert torch.allclose(prior_divergence(p, opposite), torch.full((3,), 4.0))
    assert torch.isclose(prior_divergence(p[:1], orthogonal[:1]), torch.tensor([2.0])).all()
    with pytest.raises(ValueError, match="differ in shape"):
        prior_divergence(torch.zeros(2, 3), torch.zeros(2, 4))


def test_fedmas_loss_combines_two_bsm_terms_and_the_prior_term():
    counts, y = [3, 1, 2], torch.tensor([0, 1, 2, 0])
    z1, z2, p, h = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    loss, d = FedMASLoss(counts, free_u=3.0)(z1, p, z2, h, y)
    bsm = BalancedSoftmaxLoss(counts)
    assert torch.allclose(loss, bsm(z1, y) + bsm(z2, y) + 3.0 * prior_divergence(p, h).mean())
    assert d.shape == (4,) and not d.requires_grad


def test_class_divergence_normalises_by_full_class_counts():
    meter = ClassDivergence([4, 2, 0, 3])
    meter.update(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0, 0, 1]))
    assert torch.allclose(meter.compute(), torch.tensor([0.5, 1.0, 0.0, 0.0], dtype=torch.float64))
    meter.update(torch.tensor([3.0]), torch.tensor([3]))  # a second batch / epoch adds up
    result = meter.compute()
    assert torch.allclose(result, torch.tensor([0.5, 1.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.isfinite(result).all()


def test_class_divergence_rejects_labels_the_client_does_not_have():
    meter = ClassDivergence([4, 0])
    with pytest.raises(ValueError, match=r"labels \[1\] seen, but the client's class count for them is 0"):
        meter.update(torch.tensor([1.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="outside 0..1"):
        meter.update(torch.tensor([1.0]), torch.tensor([2]))
