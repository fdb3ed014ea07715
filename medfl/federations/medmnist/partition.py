"""Client partitions of a labelled training set, as Flower's ``create_lda_partitions`` makes them.

Flower's "latent Dirichlet allocation without resampling" (``flwr.dataset.utils.common``, 0.19; ALGORITHMS.md §4.1):

1. shuffle the samples, then sort them by label;
2. partition sizes are equal: ``floor(N / P)``, plus one for the first ``N mod P`` partitions;
3. each partition ``p`` draws a label distribution ``q_p ~ Dirichlet(alpha, ..., alpha)`` over the classes present,
   from ``np.random.default_rng(seed)``;
4. partitions are filled in order; each sample's class is drawn from ``Multinomial(1, q_p)`` and a sample of that
   class is taken without replacement (from the end of the class's sorted pool);
5. once a class is exhausted its probability is set to 0, ``eps = 1e-5`` is added to every remaining class and the
   row is renormalised (this also happens once at the start of every partition);
6. ``alpha = inf`` gives IID partitions.

Random streams: the Dirichlet rows come from ``np.random.default_rng(seed)`` as in Flower. Flower draws the shuffle
and the per-sample classes from NumPy's global legacy generator; here they come from ``np.random.RandomState(seed)``,
the same generator made local, so for the same seed the per-partition label counts equal Flower's after
``np.random.seed(seed)``. Which sample of a class is taken can differ: Flower sorts with NumPy's default
(unstable) sort, this module with a stable one, so that the split does not depend on the NumPy build.
For ``alpha = inf`` Flower's own code path requires ``N`` divisible by ``P`` and by the class count; here the
label-sorted samples are dealt out in turn (partition ``j mod P``), which gives the same sizes as above and
per-class counts that differ by at most one between partitions.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import numpy as np

SeedType = Union[int, Sequence[int]]

# Flower's ``exclude_classes_and_normalize`` default: added to every class still available when renormalising.
DEFAULT_EPS = 1e-5
DEFAULT_VAL_RATIO = 0.1


def partition_sizes(num_samples: int, num_partitions: int) -> List[int]:
    """Equal sizes ``floor(N / P)``, one more for the first ``N mod P`` partitions (Flower's rule)."""
    if num_partitions < 1 or num_partitions > num_samples:
        raise ValueError(f"num_partitions must be in [1, {num_samples}] (one sample each at least): {num_partitions}")
    base, extra = divmod(num_samples, num_partitions)
    return [base + 1 if p < extra else base for p in range(num_partitions)]


def _exclude_and_renormalise(probs: np.ndarray, exhausted: np.ndarray, eps: float) -> np.ndarray:
    """Flower's ``exclude_classes_and_normalize``: +eps on available classes, 0 on exhausted ones, renormalise."""
    probs = probs.copy()
    probs[~exhausted] += eps
    probs[exhausted] = 0.0
    return probs / (probs.sum() + np.finfo(float).eps)


def lda_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    eps: float = DEFAULT_EPS,
) -> Tuple[List[np.ndarray], np.ndarray]:
    """Split sample indices ``0..N-1`` into ``num_partitions`` label-skewed parts (see the module docstring).

    ``labels`` is ``(N,)`` (or ``(N, 1)``) of class indices. Returns the index array of each partition and the
    ``(P, C)`` class distributions over the ``C`` classes present in ``labels`` (sorted): the Dirichlet draws, or
    for ``alpha = inf`` the realised label mixes.
    """
    labels = np.asarray(labels).reshape(len(labels))
    if not alpha > 0:
        raise ValueError(f"alpha (Dirichlet concentration) must be > 0 or inf, got {alpha}")
    sizes = partition_sizes(len(labels), num_partitions)
    draws = np.random.RandomState(seed)  # Flower's global legacy stream, made local
    order = draws.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    classes, starts = np.unique(labels[order], return_index=True)
    if math.isinf(alpha):
        parts = [np.sort(order[p::num_partitions]) for p in range(num_partitions)]
        mixes = np.stack([(labels[part][:, None] == classes).mean(axis=0) for part in parts])
        return parts, mixes

    pools = np.split(order, starts[1:])
    remaining = np.array([len(pool) for pool in pools])
    dirichlet = np.random.default_rng(seed).dirichlet([alpha] * len(classes), size=num_partitions)
    exhausted = np.zeros(len(classes), dtype=bool)
    parts = []
    for p in range(num_partitions):
        probs = _exclude_and_renormalise(dirichlet[p], exhausted, eps)
        taken = []
        for _ in range(sizes[p]):
            c = int(np.argmax(draws.multinomial(1, probs)))
            remaining[c] -= 1
            taken.append(pools[c][remaining[c]])
            if remaining[c] == 0:
                exhausted[c] = True
                probs = _exclude_and_renormalise(probs, exhausted, eps)
        parts.append(np.sort(np.array(taken, dtype=np.int64)))
    return parts, dirichlet


def split_train_val(
    indices: np.ndarray, val_ratio: float = DEFAULT_VAL_RATIO, seed: SeedType = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Random train/val split of one client's indices: ``floor(val_ratio * n)`` go to val (Flower's
    ``get_random_id_splits``), drawn from ``np.random.default_rng(seed)``. Both parts are returned sorted."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    shuffled = np.random.default_rng(seed).permutation(np.asarray(indices, dtype=np.int64))
    num_val = int(math.floor(val_ratio * len(shuffled)))
    return np.sort(shuffled[num_val:]), np.sort(shuffled[:num_val])


def label_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Count of each class ``0..num_classes-1``."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def total_variation_to_global(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Per partition, the total-variation distance ``0.5 * sum_c |q_p(c) - q(c)|`` between its label mix and
    the mix of all ``labels``: 0 for IID, up to 1 for disjoint label sets. A measure of label skew."""
    overall = label_histogram(labels, num_classes) / len(labels)
    mixes = [label_histogram(labels[part], num_classes) / max(len(part), 1) for part in parts]
    return np.array([0.5 * np.abs(mix - overall).sum() for mix in mixes])
