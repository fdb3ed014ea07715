"""Evaluation of a MedMNIST classifier as the seed's ``test`` function does it, plus the project's metrics.

The seed (``fl_demo/eval_utils.py:test``, ALGORITHMS.md §4.0) runs the model over batches (50 images), adds up the
batch-mean cross-entropies (``loss += criterion(outputs, targets).item()``), and hands the softmax scores to
MedMNIST's ``Evaluator``, which returns (AUC, ACC). :func:`evaluate_classifier` returns those three under the
names ``loss``, ``auc`` and ``accuracy``, the per-image mean cross-entropy as ``mean_loss``, and balanced
accuracy, macro-F1 and the project's macro-AUC.
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch
from torch.utils.data import DataLoader

from medfl.common.metrics import classification_metrics, predict_probabilities, roc_auc

# The server's per-round test metrics, in its app folder (read by result_stat/ and the Flower benchmark).
TEST_METRICS_FILE = "test_metrics.json"
BINARY_CLASSES = 2


def per_sample_cross_entropy(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """``-log p_i[y_i]`` from softmax probabilities ``(N, C)`` and labels ``(N,)`` (probabilities that underflowed
    to 0 are clipped to the smallest positive float, so the loss stays finite)."""
    picked = probabilities[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return -np.log(np.maximum(picked, np.finfo(probabilities.dtype).tiny))


def mean_cross_entropy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The cross-entropy averaged over all images."""
    return float(np.mean(per_sample_cross_entropy(labels, probabilities)))


def summed_batch_cross_entropy(labels: np.ndarray, probabilities: np.ndarray, batch_size: int) -> float:
    """The seed's evaluation loss: the sum over consecutive batches of ``batch_size`` images (the last one may be
    smaller) of each batch's mean cross-entropy. It grows with the number of batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    losses = per_sample_cross_entropy(labels, probabilities)
    return float(sum(losses[start:start + batch_size].mean() for start in range(0, len(losses), batch_size)))


def medmnist_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The AUC of MedMNIST's ``Evaluator`` (``medmnist.evaluator.getAUC``) for a single-label set.

    Binary sets (two score columns): the ROC-AUC of the positive class's score, column 1. Multi-class sets: the
    mean over **all** classes of the one-vs-rest ROC-AUC of column ``c`` for ``labels == c``. NaN where MedMNIST's
    call to sklearn would raise: the labels lack the positive or the negative class of some column (a client's
    small validation share can).
    """
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != labels.size or scores.shape[1] < BINARY_CLASSES:
        raise ValueError(f"scores must be (num_samples={labels.size}, num_classes >= 2), got {scores.shape}")
    if scores.shape[1] == BINARY_CLASSES:
        return roc_auc(labels == 1, scores[:, 1])
    aucs = [roc_auc(labels == cls, scores[:, cls]) for cls in range(scores.shape[1])]
    return math.nan if any(math.isnan(auc) for auc in aucs) else float(np.mean(aucs))


def evaluate_classifier(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> Dict[str, float]:
    """``{"accuracy", "auc", "loss", "mean_loss", "balanced_accuracy", "macro_f1", "macro_auc"}`` of ``model``
    over ``loader`` (not shuffled; its ``batch_size`` sets the batches of the summed ``loss``).

    ``accuracy`` is the arg-max accuracy, which for two softmax scores equals MedMNIST's ``score[:, 1] > 0.5``.
    """
    if loader.batch_size is None:
        raise ValueError("evaluate_classifier needs a loader with a batch_size (the seed's loss sums batch means)")
    probabilities, labels = predict_probabilities(model, loader, device)
    return {
        **classification_metrics(labels, probabilities),
        "auc": medmnist_auc(labels, probabilities),
        "loss": summed_batch_cross_entropy(labels, probabilities, loader.batch_size),
        "mean_loss": mean_cross_entropy(labels, probabilities),
    }
