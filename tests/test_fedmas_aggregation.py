"""MAS robust factor and server weights (§3.5 (c), (d))."""

import math

import numpy as np
import pytest
import torch

from medfl.fedmas.aggregation import (
    aggregation_weights,
    drw_weights,
    mas_weights,
    robust_factor,
    sample_weights,
    weighted_average,
)
from medfl.fedmas.losses import ClassDivergence


def test_robust_factor_is_the_inner_product_of_normalised_divergences():
    d_pre, d_tr = torch.tensor([1.0, 3.0, 0.0, 4.0], dtype=torch.float64), torch.tensor([2.0, 2.0, 1.0, 5.0])
    expected = (1 / 8) * (2 / 10) + (3 / 8) * (2 / 10) + (4 / 8) * (5 / 10)
    assert math.isclose(robust_factor(d_pre, d_tr), expected)


def test_mas_inv_inverts_training_divergence_on_measured_classes():
    d_pre, d_tr = torch.tensor([1.0, 3.0, 0.0, 4.0], dtype=torch.float64), torch.tensor([2.0, 2.0, 1.0, 5.0])
    # class 2 is not in C_k: not inverted, but counted in the normalising sum
    inverted = torch.tensor([1 / 2, 1 / 2, 1.0, 1 / 5], dtype=torch.float64)
    expected = float(((d_pre / d_pre.sum()) * (inverted / inverted.sum()))[[0, 1, 3]].sum())
    assert math.isclose(robust_factor(d_pre, d_tr, inverse=True), expected)


def test_equal_divergence_gives_one_over_number_of_classes():
    assert math.isclose(robust_factor(torch.tensor([2.0, 2.0, 0.0]), torch.tensor([5.0, 5.0, 0.0])), 0.5)


def test_absent_classes_never_produce_nan():
    counts = [6, 0, 3, 0]
    d_pre, d_tr = ClassDivergence(counts), ClassDivergence(counts)
    d_pre.update(torch.tensor([0.4, 0.2, 1.0]), torch.tensor([0, 0, 2]))
    d_tr.update(torch.tensor([0.3, 0.1]), torch.tensor([0, 0]))  # class 2 dropped during training
    for inverse in (False, True):
        r = robust_factor(d_pre.compute(), d_tr.compute(), inverse=inverse)
        assert math.isfinite(r) and r > 0
    assert all(math.isfinite(w) for w in mas_weights([r, 0.3]))


def test_nothing_measured_is_an_error():
    with pytest.raises(ValueError, match="D_pre is 0 for every class"):
        robust_factor(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="D_tr is 0 for every class"):
        robust_factor(torch.ones(3), torch.zeros(3))


def test_mas_weights_sum_to_one_and_follow_r():
    r = [0.2, 0.5, 0.1, 0.7]
    alpha = mas_weights(r)
    assert math.isclose(sum(alpha), 1.0)
    assert np.allclose(alpha, np.array(r) / sum(r))
    assert aggregation_weights("mas_inv", [1, 1, 1, 1], r) == alpha
    assert aggregation_weights("MAS", [1, 1, 1, 1], r) == alpha  # the README's spelling


def test_avg_weights_follow_sample_counts():
    assert np.allclose(sample_weights([64, 192]), [0.25, 0.75])
    assert aggregation_weights("avg", [64, 192]) == sample_weights([64, 192])


def test_drw_is_fedavg_early_and_effective_number_reweighted_late():
    n, r = [9920, 3136, 351], [0.2, 0.3, 0.6]
    assert np.allclose(drw_weights(n, r, current_round=79, total_rounds=100), sample_weights(n))
    q = (1 / np.array(r)) / (1 / np.array(r)).sum()
    w = (1 - 0.9999) / (1 - 0.9999**q)
    expected = np.array(n) * w / (np.array(n) * w).sum()
    late = aggregation_weights("mas_DRW", n, r, current_round=80, total_rounds=100)
    assert np.allclose(late, expected) and math.isclose(sum(late), 1.0)


def test_weight_errors_are_explicit():
    with pytest.raises(ValueError, match="unknown aggregation method 'fedprox'"):
        aggregation_weights("fedprox", [1])
    with pytest.raises(ValueError, match="needs the clients' robust factors"):
        aggregation_weights("mas", [1, 2])
    with pytest.raises(ValueError, match="needs current_round and total_rounds"):
        aggregation_weights("mas_DRW", [1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="robust factors must be finite"):
        mas_weights([0.0, 0.0])


def test_weighted_average_covers_every_entry_and_keeps_dtypes():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(10)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(21)}
    out = weighted_average([a, b], [0.25, 0.75])
    assert torch.allclose(out["w"], torch.tensor([2.5, 5.0]))
    assert out["bn.num_batches_tracked"].dtype == torch.long and out["bn.num_batches_tracked"].item() == 18
    with pytest.raises(ValueError, match=r"client state 1 has different keys.*'extra'"):
        weighted_average([a, {**b, "extra": torch.zeros(1)}], [0.5, 0.5])
