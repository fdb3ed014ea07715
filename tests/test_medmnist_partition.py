"""Flower-style LDA partitions: disjoint, complete, equal-size, seeded; IID for large alpha, skewed for small."""

import numpy as np
import pytest

from medfl.federations.medmnist.partition import (
    label_histogram,
    lda_partition,
    partition_sizes,
    split_train_val,
    total_variation_to_global,
)

INF = float("inf")
BALANCED = np.repeat(np.arange(4), 500)  # 4 classes x 500 samples
RNG_LABELS = np.random.default_rng(3).integers(0, 9, 1003)  # uneven size, 9 classes


def test_partition_sizes_follow_flower():
    assert partition_sizes(1003, 5) == [201, 201, 201, 200, 200]
    assert partition_sizes(10, 10) == [1] * 10
    with pytest.raises(ValueError, match="num_partitions must be in"):
        partition_sizes(10, 11)
    with pytest.raises(ValueError, match="num_partitions must be in"):
        partition_sizes(10, 0)


@pytest.mark.parametrize("alpha", [INF, 1e6, 1000.0, 1.0, 0.1, 0.01])
def test_partitions_are_disjoint_complete_and_equal_size(alpha):
    parts, dist = lda_partition(RNG_LABELS, 5, alpha, seed=0)
    assert [len(p) for p in parts] == partition_sizes(len(RNG_LABELS), 5)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(RNG_LABELS)))
    assert dist.shape == (5, 9)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)


def test_same_seed_same_partitions_other_seed_other_partitions():
    first, dist_first = lda_partition(RNG_LABELS, 4, 0.5, seed=11)
    again, dist_again = lda_partition(RNG_LABELS, 4, 0.5, seed=11)
    other, _ = lda_partition(RNG_LABELS, 4, 0.5, seed=12)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    np.testing.assert_array_equal(dist_first, dist_again)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_dirichlet_rows_come_from_default_rng_of_the_seed():
    _, dist = lda_partition(RNG_LABELS, 4, 0.5, seed=7)
    np.testing.assert_array_equal(dist, np.random.default_rng(7).dirichlet([0.5] * 9, size=4))


def test_infinite_alpha_is_iid():
    parts, _ = lda_partition(BALANCED, 5, INF, seed=0)
    assert total_variation_to_global(BALANCED, parts, 4).max() == 0.0
    uneven, _ = lda_partition(RNG_LABELS, 7, INF, seed=0)
    counts = np.stack([label_histogram(RNG_LABELS[p], 9) for p in uneven])
    assert (counts.max(axis=0) - counts.min(axis=0)).max() <= 1


def test_large_alpha_is_iid_like_and_small_alpha_is_skewed():
    def mean_tv(alpha: float) -> float:
        return float(np.mean([total_variation_to_global(BALANCED, lda_partition(BALANCED, 5, alpha, s)[0], 4).mean()
                              for s in range(5)]))

    assert mean_tv(1e6) < 0.1  # multinomial noise only
    assert mean_tv(1000.0) < 0.1
    assert mean_tv(0.1) > 0.4
    assert mean_tv(0.1) > 4 * mean_tv(1e6)


def test_large_alpha_on_imbalanced_labels_skews_the_last_partition_as_in_flower():
    """Near-uniform Dirichlet rows draw classes uniformly, so the rare class runs out and the last partition
    gets what is left: LDA with alpha = 1e6 is not IID on imbalanced data, alpha = inf is."""
    labels = np.array([0] * 150 + [1] * 400)
    lda, _ = lda_partition(labels, 3, 1e6, seed=0)
    iid, _ = lda_partition(labels, 3, INF, seed=0)
    assert total_variation_to_global(labels, lda, 2)[-1] > 0.2
    assert total_variation_to_global(labels, iid, 2).max() < 0.01


def test_tiny_alpha_exhausts_classes_without_failing():
    labels = np.array([0] * 3 + [1] * 50 + [2] * 7)
    parts, _ = lda_partition(labels, 6, 0.01, seed=1)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(60))


def test_accepts_column_labels_and_rejects_bad_alpha():
    parts, _ = lda_partition(RNG_LABELS[:, None], 3, 1.0, seed=0)
    assert sum(len(p) for p in parts) == len(RNG_LABELS)
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            lda_partition(RNG_LABELS, 3, alpha, seed=0)


def test_train_val_split_is_seeded_disjoint_and_floor_sized():
    indices = np.arange(100, 157)
    train, val = split_train_val(indices, 0.1, seed=(0, 1))
    assert len(val) == 5 and len(train) == 52
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), indices)
    again_train, again_val = split_train_val(indices, 0.1, seed=(0, 1))
    np.testing.assert_array_equal(val, again_val)
    _, other_val = split_train_val(indices, 0.1, seed=(0, 2))
    assert not np.array_equal(val, other_val)
    assert len(split_train_val(indices, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="val_ratio"):
        split_train_val(indices, 1.0)


# Label counts per partition that Flower 0.19's own ``create_lda_partitions`` gives for these labels with
# num_partitions=5, seed=5 (computed once with flwr 0.19.0, whose ``flwr.dataset`` later releases dropped).
FLOWER_019_COUNTS = {
    0.1: [[70, 1, 0, 0, 0, 0, 115, 0, 15], [10, 71, 0, 3, 0, 117, 0, 0, 0], [33, 1, 2, 20, 33, 0, 0, 112, 0],
          [0, 21, 102, 0, 0, 0, 0, 0, 77], [0, 28, 0, 95, 75, 0, 0, 0, 2]],
    1.0: [[71, 16, 55, 14, 1, 16, 21, 3, 4], [17, 22, 27, 2, 50, 26, 47, 9, 1], [22, 28, 22, 2, 3, 30, 15, 23, 56],
          [0, 42, 0, 57, 24, 7, 19, 35, 16], [3, 14, 0, 43, 30, 38, 13, 42, 17]],
    1000.0: [[17, 15, 38, 24, 26, 14, 20, 18, 29], [19, 16, 23, 28, 30, 24, 15, 22, 24],
             [22, 29, 19, 17, 10, 28, 23, 25, 28], [23, 23, 24, 27, 23, 23, 22, 22, 13],
             [32, 39, 0, 22, 19, 28, 35, 25, 0]],
}


@pytest.mark.parametrize("alpha", sorted(FLOWER_019_COUNTS))
def test_label_counts_equal_flower_019_for_the_same_seed(alpha):
    ours, _ = lda_partition(RNG_LABELS, 5, alpha, seed=5)
    counts = [label_histogram(RNG_LABELS[idx], 9).tolist() for idx in ours]
    assert counts == FLOWER_019_COUNTS[alpha]
