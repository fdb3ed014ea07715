"""MedMNIST .npz reading: both label shapes, grey and RGB, normalisation, and clear rejection of bad files."""

from pathlib import Path

import numpy as np
import pytest
import torch

from medfl.common.errors import DataError
from medfl.federations.medmnist.data import (
    NORM_MEAN,
    NORM_STD,
    MedMNISTDataset,
    MedMNISTFormatError,
    load_medmnist_split,
)


def _write_npz(path: Path, num: int = 12, size: int = 28, num_classes: int = 9, **overrides: np.ndarray) -> Path:
    """A small PathMNIST-like file: RGB uint8 images, labels shaped (N, 1) as in the official files."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (num, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, num_classes, (num, 1), dtype=np.uint8)
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def breastmnist(shared_data: Path) -> Path:
    return shared_data / "medmnist" / "breastmnist.npz"


def test_reads_real_breastmnist_with_flat_labels(breastmnist):
    images, labels = load_medmnist_split(breastmnist, "train", dataset="breastmnist")
    assert images.shape == (546, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (546,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == {0, 1}
    assert len(load_medmnist_split(breastmnist, "test", dataset="breastmnist")[0]) == 156


def test_reads_rgb_file_with_column_labels(tmp_path):
    path = _write_npz(tmp_path / "pathmnist.npz")
    images, labels = load_medmnist_split(path, "val")
    assert images.shape == (12, 28, 28, 3)
    assert labels.shape == (12,) and labels.dtype == np.int64
    with np.load(path) as raw:
        np.testing.assert_array_equal(labels, raw["val_labels"][:, 0])


def test_dataset_gives_normalised_channel_first_float_images(tmp_path):
    images = np.zeros((2, 28, 28, 3), dtype=np.uint8)
    images[1] = 255
    path = _write_npz(tmp_path / "pathmnist.npz", train_images=images, train_labels=np.array([[3], [8]], np.uint8))
    dataset = MedMNISTDataset.from_npz(path, "train")
    first, second = dataset[0], dataset[1]
    assert first["image"].shape == (3, 28, 28) and first["image"].dtype == torch.float32
    assert first["label"].dtype == torch.int64 and first["label"].item() == 3
    assert torch.allclose(first["image"], torch.full((3, 28, 28), (0.0 - NORM_MEAN) / NORM_STD))
    assert torch.allclose(second["image"], torch.full((3, 28, 28), (1.0 - NORM_MEAN) / NORM_STD))


def test_dataset_subset_by_indices(breastmnist):
    dataset = MedMNISTDataset.from_npz(breastmnist, "train", dataset="breastmnist", indices=[5, 7, 11])
    images, labels = load_medmnist_split(breastmnist, "train", dataset="breastmnist")
    assert len(dataset) == 3
    assert dataset[2]["label"].item() == labels[11]
    assert dataset[2]["image"].shape == (1, 28, 28)


def test_rejects_missing_keys(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, train_images=np.zeros((4, 28, 28, 3), np.uint8))
    with pytest.raises(MedMNISTFormatError, match=r"partial\.npz: missing key\(s\) \['train_labels'\]"):
        load_medmnist_split(path, "train")


def test_rejects_image_label_count_mismatch(tmp_path):
    path = _write_npz(tmp_path / "mismatch.npz", train_labels=np.zeros((11, 1), np.uint8))
    with pytest.raises(MedMNISTFormatError, match=r"mismatch\.npz: train has 12 images but 11 labels"):
        load_medmnist_split(path, "train")


def test_rejects_labels_out_of_range(tmp_path):
    path = _write_npz(tmp_path / "range.npz", test_labels=np.full((12, 1), 9, np.uint8))
    with pytest.raises(MedMNISTFormatError, match=r"range\.npz: test_labels has label\(s\) \[9\] outside \[0, 9\)"):
        load_medmnist_split(path, "test")


def test_rejects_multilabel_and_float_labels(tmp_path):
    multi = _write_npz(tmp_path / "chest.npz", train_labels=np.zeros((12, 14), np.uint8))
    with pytest.raises(MedMNISTFormatError, match=r"train_labels has shape \(12, 14\)"):
        load_medmnist_split(multi, "train")
    floats = _write_npz(tmp_path / "float.npz", train_labels=np.zeros((12, 1), np.float32))
    with pytest.raises(MedMNISTFormatError, match="float32; expected integer"):
        load_medmnist_split(floats, "train")


def test_rejects_wrong_channel_count_for_the_set(breastmnist):
    with pytest.raises(MedMNISTFormatError, match="1 channel.* but pathmnist images have 3"):
        load_medmnist_split(breastmnist, "train")


def test_rejects_corrupt_and_truncated_files(tmp_path, breastmnist):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(MedMNISTFormatError, match=r"garbage\.npz: not a readable \.npz archive"):
        load_medmnist_split(garbage, "train")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(breastmnist.read_bytes()[:2000])
    with pytest.raises(MedMNISTFormatError, match=r"truncated\.npz"):
        load_medmnist_split(truncated, "train", dataset="breastmnist")


def test_rejects_npy_and_pickled_arrays(tmp_path):
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(MedMNISTFormatError, match="single .npy array"):
        load_medmnist_split(npy, "train")
    pickled = _write_npz(tmp_path / "pickled.npz", train_labels=np.array([{"x": 1}] * 12, dtype=object))
    with pytest.raises(MedMNISTFormatError, match=r"pickled\.npz: cannot read an array"):
        load_medmnist_split(pickled, "train")


def test_rejects_unknown_split_set_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_medmnist_split(tmp_path / "x.npz", "training")
    with pytest.raises(ValueError, match="unknown MedMNIST 2D set 'chestmnist'"):
        load_medmnist_split(tmp_path / "x.npz", "train", dataset="chestmnist")
    with pytest.raises(DataError, match=r"\[site-2\] .*x\.npz: MedMNIST file not found"):
        load_medmnist_split(tmp_path / "x.npz", "train", site="site-2")
