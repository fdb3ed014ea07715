"""prepare_medmnist: per-client split files that each client reads back, a summary, and clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medfl.common.errors import DataError
from medfl.federations.medmnist.data import load_medmnist_split
from medfl.federations.medmnist.splits import (
    SUMMARY_NAME,
    client_split_path,
    load_client_datasets,
    prepare_client_splits,
    read_client_split,
)

SCRIPT = Path(__file__).resolve().parents[1] / "data_preparation" / "prepare_medmnist.py"
NUM_TRAIN = 546  # BreastMNIST official train split


@pytest.fixture(scope="module")
def breastmnist(shared_data: Path) -> Path:
    return shared_data / "medmnist" / "breastmnist.npz"


@pytest.fixture()
def split_dir(tmp_path: Path, breastmnist: Path) -> Path:
    prepare_client_splits(breastmnist, tmp_path, num_clients=3, alpha=1000.0, val_ratio=0.1, seed=0,
                          dataset="breastmnist")
    return tmp_path


def test_clients_read_back_disjoint_splits_covering_the_train_set(split_dir):
    seen = []
    for k in (1, 2, 3):
        split = read_client_split(client_split_path(split_dir, f"site-{k}"), NUM_TRAIN)
        assert split.site == f"site-{k}"
        assert len(split.val) == (len(split.train) + len(split.val)) // 10  # floor(0.1 * n)
        assert split.params["alpha"] == 1000.0 and split.params["seed"] == 0
        seen += [split.train, split.val]
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(NUM_TRAIN))
    assert sorted(p.name for p in split_dir.iterdir()) == ["site-1.json", "site-2.json", "site-3.json", SUMMARY_NAME]


def test_summary_histograms_match_the_client_files(split_dir, breastmnist):
    _, labels = load_medmnist_split(breastmnist, "train", dataset="breastmnist")
    summary = json.loads((split_dir / SUMMARY_NAME).read_text())
    assert summary["global_label_histogram"] == np.bincount(labels).tolist()
    for site, info in summary["clients"].items():
        split = read_client_split(client_split_path(split_dir, site), NUM_TRAIN)
        assert info["train_label_histogram"] == np.bincount(labels[split.train], minlength=2).tolist()
        assert info["val_label_histogram"] == np.bincount(labels[split.val], minlength=2).tolist()
    assert 0.0 <= summary["mean_tv_distance_to_global"] <= 1.0


def test_rerun_with_the_same_arguments_gives_identical_files(split_dir, breastmnist, tmp_path_factory):
    other = tmp_path_factory.mktemp("again")
    prepare_client_splits(breastmnist, other, num_clients=3, alpha=1000.0, val_ratio=0.1, seed=0,
                          dataset="breastmnist")
    for name in ("site-1.json", "site-2.json", "site-3.json", SUMMARY_NAME):
        assert (other / name).read_bytes() == (split_dir / name).read_bytes()


def test_client_datasets_hold_their_own_samples(split_dir, breastmnist):
    train, val = load_client_datasets(breastmnist, split_dir, "site-2", dataset="breastmnist")
    split = read_client_split(client_split_path(split_dir, "site-2"), NUM_TRAIN)
    assert len(train) == len(split.train) and len(val) == len(split.val)
    assert train[0]["image"].shape == (1, 28, 28)
    with pytest.raises(ValueError, match="made for 'breastmnist', but site-2 loads 'pneumoniamnist'"):
        load_client_datasets(breastmnist, split_dir, "site-2", dataset="pneumoniamnist")


def test_infinite_alpha_is_written_as_strict_json(tmp_path, breastmnist):
    summary = prepare_client_splits(breastmnist, tmp_path, num_clients=2, alpha=float("inf"), dataset="breastmnist")
    assert json.loads((tmp_path / "site-1.json").read_text())["alpha"] == "inf"
    assert summary["mean_tv_distance_to_global"] < 0.01


def test_refuses_a_folder_with_other_clients_files_and_bad_arguments(split_dir, breastmnist):
    with pytest.raises(FileExistsError, match=r"other clients \['site-3.json'\]"):
        prepare_client_splits(breastmnist, split_dir, num_clients=2, dataset="breastmnist")
    with pytest.raises(ValueError, match="num_clients must be at least 1"):
        prepare_client_splits(breastmnist, split_dir, num_clients=0, dataset="breastmnist")
    with pytest.raises(ValueError, match="val_ratio must be in"):
        prepare_client_splits(breastmnist, split_dir, val_ratio=1.5, dataset="breastmnist")


def test_read_rejects_files_for_another_train_split_or_tampered(split_dir):
    path = client_split_path(split_dir, "site-1")
    with pytest.raises(ValueError, match=r"site-1\.json: made for a train split of 546 samples.* has 600"):
        read_client_split(path, 600)
    content = json.loads(path.read_text())
    content["val"].append(content["train"][0])
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="train and val share indices"):
        read_client_split(path, NUM_TRAIN)
    content["val"] = [NUM_TRAIN]
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"'val' has indices outside \[0, 546\)"):
        read_client_split(path, NUM_TRAIN)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON split file"):
        read_client_split(path, NUM_TRAIN)
    with pytest.raises(DataError, match=r"\[site-9\] .*site-9.json: client split file not found"):
        read_client_split(client_split_path(split_dir, "site-9"), NUM_TRAIN, site="site-9")


def test_wrongly_named_file_is_refused(split_dir, breastmnist):
    client_split_path(split_dir, "site-1").replace(client_split_path(split_dir, "site-7"))
    with pytest.raises(DataError, match=r"\[site-7\] .*site-7.json: belongs to 'site-1', not to 'site-7'"):
        load_client_datasets(breastmnist, split_dir, "site-7", dataset="breastmnist")


def test_command_line(tmp_path, breastmnist):
    out = tmp_path / "splits"
    args = [sys.executable, str(SCRIPT), "--npz", str(breastmnist), "--dataset", "breastmnist", "--num_clients", "3",
            "--alpha", "0.5", "--val_ratio", "0.1", "--seed", "0", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "site-3: train" in done.stdout
    assert read_client_split(out / "site-3.json", NUM_TRAIN).params["alpha"] == 0.5

    wrong_set = subprocess.run(args[:4] + ["--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert wrong_set.returncode == 1
    assert "breastmnist.npz: train_images has 1 channel(s) but pathmnist images have 3" in wrong_set.stderr
