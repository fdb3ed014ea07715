"""Balanced accuracy from per-class counts, so that a server can pool it over clients exactly (§3.7).

Clients report, per split, the correct predictions and the samples of each class. Summing these over clients
and taking the mean per-class recall gives the balanced accuracy of the pooled test set (what the original
measures on its pooled CSV), which differs from the mean of the clients' balanced accuracies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

VALIDATION = "validation"
TESTING = "testing"


def class_hits(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> tuple[list[int], list[int]]:
    """``(correct, total)``: per class c, the samples of class c predicted as c, and the samples of class c."""
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels {np.unique(labels).tolist()} outside 0..{n_classes - 1}")
    total = np.bincount(labels, minlength=n_classes)
    correct = np.bincount(labels[labels == predictions], minlength=n_classes)
    return correct.tolist(), total.tolist()


def balanced_accuracy_from_counts(correct: Sequence[int], total: Sequence[int]) -> float:
    """Mean over the classes with samples of ``correct[c] / total[c]`` (sklearn's ``balanced_accuracy_score``).

    NaN when there are no samples at all.
    """
    correct_array = np.asarray(correct, dtype=np.float64)
    total_array = np.asarray(total, dtype=np.float64)
    if correct_array.shape != total_array.shape or (correct_array > total_array).any():
        raise ValueError(f"per-class correct counts {list(correct)} do not fit the class sizes {list(total)}")
    present = total_array > 0
    if not present.any():
        return math.nan
    return float(np.mean(correct_array[present] / total_array[present]))


def check_class_counts(counts: Any, num_classes: int, num_val_samples: Any) -> Optional[str]:
    """``None`` if ``counts`` is a client's ``{split: {"correct": [...], "total": [...]}}`` report for both splits:
    ``num_classes`` non-negative integers each, ``correct <= total`` class by class, and validation totals summing to
    the client's validation size ``num_val_samples``; else what is wrong."""
    if not isinstance(counts, Mapping):
        return f"is a {type(counts).__name__}, not a dict of splits"
    for split in (VALIDATION, TESTING):
        pair = counts.get(split)
        if not isinstance(pair, Mapping) or not {"correct", "total"} <= set(pair):
            return f"has no 'correct' and 'total' counts for its '{split}' split"
        for name in ("correct", "total"):
            values = pair[name]
            counts_ok = isinstance(values, Sequence) and len(values) == num_classes and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values)
            if not counts_ok:
                return f"'{split}' {name} is {values!r}, not {num_classes} counts >= 0"
        if any(c > t for c, t in zip(pair["correct"], pair["total"])):
            return f"'{split}' has more correct predictions {list(pair['correct'])} than samples {list(pair['total'])}"
    if sum(counts[VALIDATION]["total"]) != num_val_samples:
        return (f"'{VALIDATION}' counts {sum(counts[VALIDATION]['total'])} samples, but the client reports "
                f"{num_val_samples} validation samples")
    return None


def pool_counts(counts: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[list[int], list[int]]:
    """Sum ``(correct, total)`` pairs of several clients class by class."""
    if not counts:
        raise ValueError("no client counts to pool")
    correct = np.sum([np.asarray(c, dtype=np.int64) for c, _ in counts], axis=0)
    total = np.sum([np.asarray(t, dtype=np.int64) for _, t in counts], axis=0)
    return correct.tolist(), total.tolist()


def select_rounds(history: Sequence[dict], first_round: int = 0) -> dict:
    """The rounds to report from a server history (records with ``round`` and ``pooled[split]``).

    ``validation_selected``: the first round with the highest pooled validation balanced accuracy (the model
    selection of this project); ``test_selected``: the same on the test split (the original's protocol, which
    reports an optimistic number); both among the rounds from ``first_round`` on (1: not the initial model, which
    the original never evaluates); ``last``: the last record (the final model). Each entry is the record itself.
    """
    if not history:
        return {}

    def best(split: str) -> dict:
        scored = [r for r in history if r["round"] >= first_round and not math.isnan(r["pooled"][split])]
        return max(scored, key=lambda r: r["pooled"][split]) if scored else history[-1]

    return {"validation_selected": best(VALIDATION), "test_selected": best(TESTING), "last": history[-1]}
