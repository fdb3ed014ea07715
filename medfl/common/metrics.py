"""Classification metrics (accuracy, balanced accuracy, macro-F1, one-vs-rest macro-AUC) without scikit-learn.

PRR-FL reports sklearn's ``accuracy_score``, ``f1_score(average='macro')`` and
``roc_auc_score(multi_class='ovr')`` (macro) on softmax probabilities, all x100. These functions return fractions
in [0, 1]; multiply by 100 for the original's tables.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["accuracy", "balanced_accuracy", "classification_metrics", "macro_auc_ovr", "macro_f1",
           "predict_probabilities", "roc_auc"]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError("metrics need at least one sample")
    return labels


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Fraction of predictions equal to the labels."""
    labels = _check_labels(labels)
    return float(np.mean(labels == np.asarray(predictions).reshape(-1)))


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels`` (sklearn's ``balanced_accuracy_score``)."""
    labels = _check_labels(labels)
    predictions = np.asarray(predictions).reshape(-1)
    return float(np.mean([np.mean(predictions[labels == cls] == cls) for cls in np.unique(labels)]))


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN).

    As sklearn's default, the mean runs over the classes present in ``labels`` or ``predictions``: a class absent
    from both is skipped, a class that is predicted but never true counts with F1 = 0. Never NaN.
    """
    labels = _check_labels(labels)
    predictions = np.asarray(predictions).reshape(-1)
    scores = []
    for cls in np.union1d(labels, predictions):
        true_pos = np.sum((predictions == cls) & (labels == cls))
        false_pos = np.sum((predictions == cls) & (labels != cls))
        false_neg = np.sum((predictions != cls) & (labels == cls))
        scores.append(2 * true_pos / (2 * true_pos + false_pos + false_neg))
    return float(np.mean(scores))


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of ``scores`` for the binary labels ``positive`` (sklearn's ``roc_auc_score``, without sklearn).

    AUC = (R - n (n + 1) / 2) / (n m), the Mann-Whitney rank formula with ``R`` the sum of the (tie-averaged)
    ranks of the ``n`` positives' scores among all scores and ``m`` the number of negatives; a tie between a
    positive and a negative counts one half. NaN when ``positive`` holds only one class (sklearn raises there).
    """
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size != positive.size:
        raise ValueError(f"roc_auc needs one score per label, got {scores.size} scores for {positive.size} labels")
    num_pos, num_neg = int(positive.sum()), int((~positive).sum())
    if num_pos == 0 or num_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def _check_scores(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.size:
        raise ValueError(f"probabilities must be (num_samples={labels.size}, num_classes), got {probabilities.shape}")
    return probabilities


def macro_auc_ovr(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest ROC-AUC from class scores ``(num_samples, num_classes)``: the mean of :func:`roc_auc`
    (``labels == c``, column ``c``) over the classes that have both positives and negatives in ``labels``;
    classes absent from the labels are skipped (sklearn raises instead). NaN only when no class qualifies.
    """
    labels = _check_labels(labels)
    probabilities = _check_scores(labels, probabilities)
    aucs = [roc_auc(labels == cls, probabilities[:, cls]) for cls in range(probabilities.shape[1])]
    defined = [auc for auc in aucs if not math.isnan(auc)]
    return float(np.mean(defined)) if defined else math.nan


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """``{"accuracy", "balanced_accuracy", "macro_f1", "macro_auc"}`` of arg-max predictions and class
    probabilities (fractions)."""
    predictions = np.asarray(probabilities).argmax(axis=1)
    return {
        "accuracy": accuracy(labels, predictions),
        "balanced_accuracy": balanced_accuracy(labels, predictions),
        "macro_f1": macro_f1(labels, predictions),
        "macro_auc": macro_auc_ovr(labels, probabilities),
    }


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, loader: DataLoader, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, num_classes)`` and labels ``(N,)`` of ``model`` in eval mode over ``loader``.

    ``loader`` yields ``{"image", "label"}`` dicts (the project's convention) or ``(images, labels)`` pairs.
    The model is left in eval mode.
    """
    model.eval().to(device)
    probabilities, labels = [], []
    for batch in loader:
        images, targets = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch
        logits = model(images.to(device).float())
        probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
        labels.append(targets.cpu().numpy().reshape(-1))
    if not labels:
        raise ValueError("cannot evaluate on an empty loader")
    return np.concatenate(probabilities), np.concatenate(labels)
