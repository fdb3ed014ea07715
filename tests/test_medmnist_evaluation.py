"""MedMNIST evaluation as the seed's ``test``: MedMNIST's AUC (hand-computed cases), the summed batch loss, and
``evaluate_classifier`` against the seed's loop written out with torch."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medfl.common.metrics import macro_auc_ovr, roc_auc
from medfl.federations.medmnist.evaluation import (
    evaluate_classifier,
    mean_cross_entropy,
    medmnist_auc,
    summed_batch_cross_entropy,
)


def test_binary_auc_is_the_share_of_positive_negative_pairs_ranked_right():
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 pairs, (0.35, 0.4) is ranked wrong -> 3/4
    labels = np.array([0, 0, 1, 1])
    positive_score = np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(labels == 1, positive_score) == 0.75
    scores = np.stack([1 - positive_score, positive_score], axis=1)
    assert medmnist_auc(labels, scores) == 0.75
    # MedMNIST's binary AUC reads the positive class's column only
    assert medmnist_auc(labels, np.stack([np.array([9.0, -3.0, 0.5, 7.0]), positive_score], axis=1)) == 0.75
    assert medmnist_auc(1 - labels, scores) == 0.25


def test_a_tie_between_a_positive_and_a_negative_counts_one_half():
    # pairs: (0.5 pos, 0.5 neg) tie = 1/2; (0.5, 0.2), (0.9, 0.5), (0.9, 0.2) right -> 3.5 / 4
    labels = np.array([0, 1, 0, 1])
    score = np.array([0.5, 0.5, 0.2, 0.9])
    assert roc_auc(labels == 1, score) == 0.875
    assert roc_auc(labels == 1, np.full(4, 0.3)) == 0.5


THREE_CLASS_LABELS = np.array([0, 0, 1, 1, 2, 2])
THREE_CLASS_SCORES = np.array([
    [0.7, 0.2, 0.1],
    [0.4, 0.5, 0.1],
    [0.3, 0.6, 0.1],
    [0.5, 0.3, 0.2],
    [0.2, 0.2, 0.6],
    [0.1, 0.5, 0.4],
])


def test_multi_class_auc_is_the_mean_of_the_one_vs_rest_aucs():
    # class 0: positives 0.7, 0.4 vs negatives 0.3 0.5 0.2 0.1: 4 + 3 of 8 right -> 0.875
    # class 1: positives 0.6, 0.3 vs negatives 0.2 0.5 0.2 0.5: 4 + 2 of 8 -> 0.75
    # class 2: positives 0.6, 0.4 vs negatives 0.1 0.1 0.1 0.2: 8 of 8 -> 1.0
    per_class = [roc_auc(THREE_CLASS_LABELS == c, THREE_CLASS_SCORES[:, c]) for c in range(3)]
    assert per_class == [0.875, 0.75, 1.0]
    assert medmnist_auc(THREE_CLASS_LABELS, THREE_CLASS_SCORES) == pytest.approx((0.875 + 0.75 + 1.0) / 3)
    assert macro_auc_ovr(THREE_CLASS_LABELS, THREE_CLASS_SCORES) == pytest.approx(0.875)


def test_auc_is_undefined_where_medmnist_would_raise():
    no_class_2 = np.array([0, 0, 1, 1, 0, 1])
    assert math.isnan(medmnist_auc(no_class_2, THREE_CLASS_SCORES))  # MedMNIST averages over every class
    assert not math.isnan(macro_auc_ovr(no_class_2, THREE_CLASS_SCORES))  # the project's macro-AUC skips it
    assert math.isnan(medmnist_auc(np.ones(3, dtype=int), np.full((3, 2), 0.5)))
    with pytest.raises(ValueError, match=r"scores must be \(num_samples=3, num_classes >= 2\)"):
        medmnist_auc(np.zeros(3, dtype=int), np.zeros((3, 1)))


def test_summed_loss_adds_the_batch_means_as_the_seed_does():
    logits = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (7,), generator=torch.Generator().manual_seed(1))
    probabilities = torch.softmax(logits, 1).numpy()
    seed_loss = sum(torch.nn.functional.cross_entropy(logits[i:i + 3], labels[i:i + 3]).item() for i in (0, 3, 6))
    assert summed_batch_cross_entropy(labels.numpy(), probabilities, 3) == pytest.approx(seed_loss, rel=1e-5)
    mean = torch.nn.functional.cross_entropy(logits, labels).item()
    assert summed_batch_cross_entropy(labels.numpy(), probabilities, 7) == pytest.approx(mean, rel=1e-5)
    assert mean_cross_entropy(labels.numpy(), probabilities) == pytest.approx(mean, rel=1e-5)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        summed_batch_cross_entropy(labels.numpy(), probabilities, 0)


def test_evaluate_classifier_equals_the_seed_test_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    images, labels = torch.randn(120, 3, 2, 2), torch.arange(120) % 3
    loader = DataLoader(TensorDataset(images, labels), batch_size=50)
    metrics = evaluate_classifier(model, loader, torch.device("cpu"))

    # fl_demo/eval_utils.py:test, written out: summed batch losses, softmax scores, MedMNIST's (AUC, ACC)
    loss, scores = 0.0, []
    with torch.no_grad():
        for x, y in loader:
            outputs = model(x)
            loss += torch.nn.functional.cross_entropy(outputs, y).item()
            scores.append(outputs.softmax(dim=-1))
    scores = torch.cat(scores).numpy()
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["accuracy"] == np.mean(scores.argmax(1) == labels.numpy())
    ovr = [roc_auc(labels.numpy() == c, scores[:, c]) for c in range(3)]
    assert metrics["auc"] == pytest.approx(np.mean(ovr))
    assert metrics["mean_loss"] == pytest.approx(torch.nn.functional.cross_entropy(model(images), labels).item(),
                                                 rel=1e-5)
    assert set(metrics) == {"accuracy", "auc", "loss", "mean_loss", "balanced_accuracy", "macro_f1", "macro_auc"}
