"""k-NN probe of a frozen prior's features (medfl.fedmas.probe)."""

import math

import numpy as np
import pytest
import torch

from medfl.fedmas.probe import class_recalls, encode, knn_predict


def test_knn_votes_by_cosine_similarity_weighted_by_closeness():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([[10.0, 1.0], [1.0, 20.0]])  # cosine, so the scale does not matter
    assert knn_predict(bank, labels, queries, k=1, num_classes=2).tolist() == [0, 1]
    # k = 5: class 1 has three votes, but the query is far closer to the two class-0 rows
    assert knn_predict(bank, labels, queries[:1], k=5, num_classes=2).tolist() == [0]
    assert knn_predict(bank, labels, queries[:1], k=5, num_classes=2, temperature=100.0).tolist() == [1]


def test_knn_checks_k_and_the_labels():
    bank, labels = torch.rand(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"k must be in 1..4"):
        knn_predict(bank, labels, torch.rand(1, 3), k=5, num_classes=2)
    with pytest.raises(ValueError, match="4 memory-bank features but 3 labels"):
        knn_predict(bank, labels[:3], torch.rand(1, 3), k=1, num_classes=2)


def test_class_recalls_are_per_class_and_nan_without_samples():
    recalls = class_recalls(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), num_classes=3)
    assert recalls[:2] == [0.5, 1.0] and math.isnan(recalls[2])


def test_encode_runs_the_encoder_in_eval_mode_in_batches():
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(12))
    images = torch.rand(5, 3, 2, 2)
    features = encode(encoder, images, batch_size=2)
    assert features.shape == (5, 12) and not encoder.training
    assert torch.allclose(features, encoder(images), atol=1e-6)
