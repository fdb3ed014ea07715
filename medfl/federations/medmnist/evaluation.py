"""Evaluation of a MedMNIST classifier: the project's classification metrics plus the mean cross-entropy.

Flower's ``test`` function reports the cross-entropy loss and the accuracy; the server and the clients of this
job report both (and the server also balanced accuracy, macro-F1 and macro-AUC).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch.utils.data import DataLoader

from medfl.common.metrics import classification_metrics, predict_probabilities

# The server's per-round test metrics, in its app folder (read by result_stat/ and the Flower benchmark).
TEST_METRICS_FILE = "test_metrics.json"


def mean_cross_entropy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """``-mean_i log p_i[y_i]`` from softmax probabilities ``(N, C)`` and labels ``(N,)`` (probabilities that
    underflowed to 0 are clipped to the smallest positive float, so the loss stays finite)."""
    picked = probabilities[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(-np.mean(np.log(np.maximum(picked, np.finfo(probabilities.dtype).tiny))))


def evaluate_classifier(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> Dict[str, float]:
    """``{"accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "loss"}`` of ``model`` over ``loader``."""
    probabilities, labels = predict_probabilities(model, loader, device)
    return {**classification_metrics(labels, probabilities), "loss": mean_cross_entropy(labels, probabilities)}
