"""Common layer: configuration placeholder, datalists, in-memory slices, parameter helpers, atomic writes."""

import copy
import json
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import configure

from medfl.common.classification import ClassificationExecutor, drops_last_batch
from medfl.common.config import load_train_config, resolve_placeholder
from medfl.common.data import datalist_path, load_segmentation_pairs, read_datalist
from medfl.common.errors import DataError
from medfl.common.io import atomic_torch_save, atomic_write_json
from medfl.common.networks import build_network, register_network
from medfl.common.params import CHUNK_ELEMENTS, bundle, load_numpy, to_numpy, unbundle, weighted_mean


def test_placeholder_unresolved_names_site_and_path(monkeypatch, tmp_path):
    monkeypatch.delenv("DATASET_ROOT", raising=False)
    with pytest.raises(DataError, match=r"\[client_MSD\] DATASET_ROOT/dataset_2D:.*placeholder DATASET_ROOT"):
        resolve_placeholder("DATASET_ROOT/dataset_2D", "client_MSD")
    monkeypatch.setenv("DATASET_ROOT", str(tmp_path))
    assert resolve_placeholder("DATASET_ROOT/dataset_2D", "client_MSD") == f"{tmp_path}/dataset_2D"
    assert resolve_placeholder("/data/x") == "/data/x"


def test_train_config_errors(tmp_path):
    with pytest.raises(DataError, match=r"\[site-1\].*config_train.json: training configuration not found"):
        load_train_config(tmp_path / "config_train.json", site="site-1")
    (tmp_path / "config_train.json").write_text("{broken")
    with pytest.raises(DataError, match="not valid JSON"):
        load_train_config(tmp_path / "config_train.json", site="site-1")


def test_datalist_errors(tmp_path):
    assert datalist_path(tmp_path, "client_A") == tmp_path / "client_A.json"
    with pytest.raises(DataError, match=r"\[client_A\].*client_A.json: datalist not found"):
        read_datalist(tmp_path / "client_A.json", "training", "client_A")
    (tmp_path / "client_A.json").write_text(json.dumps({"training": [], "validation": [{"image": "x", "label": "y"}]}))
    with pytest.raises(DataError, match="the 'training' split is empty"):
        read_datalist(tmp_path / "client_A.json", "training", "client_A")
    with pytest.raises(DataError, match="has no 'testing' list"):
        read_datalist(tmp_path / "client_A.json", "testing", "client_A")


def test_slice_pairs_errors(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(tmp_path / "image.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), str(tmp_path / "label.nii.gz"))
    item = {"image": "image.nii.gz", "label": "label.nii.gz"}
    with pytest.raises(DataError, match=r"\[s\].*image.nii.gz: image shape \(8, 8\) does not match label shape"):
        load_segmentation_pairs([item], tmp_path, "s")
    with pytest.raises(DataError, match=r"missing.nii.gz: image file not found"):
        load_segmentation_pairs([{"image": "missing.nii.gz", "label": "label.nii.gz"}], tmp_path, "s")


def test_params_roundtrip_and_weighted_mean():
    net = build_network("unet", channels=(4, 8), strides=(2,), num_res_units=0)
    params = to_numpy(net.state_dict())
    assert unbundle(bundle({"global": params, "other": {"w": np.ones(2)}}))["global"].keys() == params.keys()
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    load_numpy(net, zeros)
    assert all(float(t.abs().sum()) == 0 for t in net.state_dict().values())
    a, b = {"w": np.array([0.0, 2.0]), "n": np.array(2)}, {"w": np.array([4.0, 6.0]), "n": np.array(4)}
    mean = weighted_mean([a, b], [1, 3])
    np.testing.assert_allclose(mean["w"], [3.0, 5.0])
    assert mean["n"] == 4 and mean["n"].dtype == np.array(2).dtype
    with pytest.raises(KeyError, match="missing"):
        load_numpy(net, {})


def test_weighted_mean_sums_in_float64_in_client_order_without_temporaries():
    """A 3-chunk layer of three clients: the float64 sum of w_k / sum(w) * x_k in client order, rounded once to
    float32, and no memory beyond the result and the two chunk buffers (numpy reports to tracemalloc)."""
    rng = np.random.default_rng(0)
    size = 2 * CHUNK_ELEMENTS + 5
    params = [{"w": rng.standard_normal(size, dtype=np.float32)} for _ in range(3)]
    weights = [28, 17, 40]
    expected = np.zeros(size)
    for p, w in zip(params, weights):
        expected = expected + p["w"].astype(np.float64) * (w / sum(weights))
    tracemalloc.start()
    mean = weighted_mean(params, weights)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert mean["w"].dtype == np.float32 and np.array_equal(mean["w"], expected.astype(np.float32))
    assert peak <= mean["w"].nbytes + 2 * CHUNK_ELEMENTS * 8 + 2 ** 20, peak  # sum() of fresh temporaries: 3 chunks


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path):
    target = tmp_path / "model.pt"
    atomic_torch_save({"a": torch.ones(1)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": Unpicklable()}, target)
    assert torch.load(target, weights_only=True)["a"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temporary file may be left"
    atomic_write_json({"x": 1}, tmp_path / "d.json")
    assert json.loads((tmp_path / "d.json").read_text()) == {"x": 1}


def test_random_transforms_are_seeded_per_run():
    """MONAI's random transforms keep their own RandomState: the executor seeds them with the run's seed."""
    from monai.transforms import Compose, RandFlipd, RandGaussianNoised
    from torch.utils.data import ConcatDataset, Subset

    from medfl.common.data import SegmentationSliceDataset
    from medfl.common.random_state import seed_random_transforms

    def augmented(seed):
        transform = Compose([RandFlipd(keys="image", prob=0.5), RandGaussianNoised(keys="image", prob=1.0)])
        pairs = [{"image": np.ones((1, 4, 4), np.float32), "label": np.zeros((1, 4, 4), np.float32)}]
        datasets = {"training": Subset(SegmentationSliceDataset(pairs, transform), [0]),
                    "pooled": ConcatDataset([SegmentationSliceDataset(pairs), SegmentationSliceDataset(pairs, transform)])}
        assert seed_random_transforms(datasets, seed) == 2
        return [datasets["training"][0]["image"] for _ in range(3)]

    for a, b in zip(augmented(7), augmented(7)):
        torch.testing.assert_close(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(augmented(7), augmented(8)))


def test_freeze_setup_objects_collects_first_and_leaves_later_garbage_collectable():
    """After setup the per-round gc.collect scans only what rounds allocate; setup's cyclic garbage is gone."""
    import gc
    import weakref

    from medfl.common.runtime import freeze_setup_objects

    class Node:
        pass

    garbage = Node()
    garbage.self = garbage
    ref = weakref.ref(garbage)
    del garbage
    try:
        freeze_setup_objects()
        assert ref() is None and gc.get_freeze_count() > 0
        cycle = Node()
        cycle.self = cycle
        ref = weakref.ref(cycle)
        del cycle
        assert gc.collect() >= 1 and ref() is None
    finally:
        gc.unfreeze()


BATCH = 16
LINEAR = torch.nn.Linear(2, 3)
WITH_BN1D = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))


@pytest.mark.parametrize("num_samples, drop_last, model, expected", [
    (33, False, LINEAR, False),  # kept: PyTorch's default, as HarmoFL, PRR-FL and the MedMNIST seed train
    (33, True, LINEAR, True),  # Fed-ISIC2019's drop_last=True (FedMAS §3.4)
    (33, False, WITH_BN1D, True),  # a last batch of one sample cannot train BatchNorm1d (the original stops)
    (34, False, WITH_BN1D, False),  # two samples can
    (32, False, WITH_BN1D, False),  # no incomplete batch
    (BATCH, True, LINEAR, False),  # one full batch: nothing to drop
    (5, True, LINEAR, False),  # smaller than a batch: dropping it would leave no batch at all
    (1, False, WITH_BN1D, False),  # a single-sample set is never dropped either
])
def test_drops_last_batch(num_samples, drop_last, model, expected):
    assert drops_last_batch(num_samples, BATCH, drop_last, model) is expected


class Vectors(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.full((2,), float(i)), "label": i % 3}


register_network("test_common_linear")(lambda: copy.deepcopy(LINEAR))
register_network("test_common_bn1d")(lambda: copy.deepcopy(WITH_BN1D))


def classification_client(network: str, training: int, **config) -> ClassificationExecutor:
    class VectorClient(ClassificationExecutor):
        def build_datasets(self):
            return {"training": Vectors(training), "validation": Vectors(3)}

    client = configure(VectorClient(), {"network": {"name": network}, "optimizer": {"name": "sgd", "lr": 0.1},
                                             "batch_size": 4, "device": "cpu", **config}, "site-1")
    client.setup(None)
    return client


@pytest.mark.parametrize("network, training, config, dropped", [
    ("test_common_linear", 10, {}, False),  # the last batch (2 samples) kept by default
    ("test_common_linear", 10, {"drop_last": True}, True),
    ("test_common_bn1d", 9, {}, True),  # a last batch of one sample under BatchNorm1d is dropped
    ("test_common_bn1d", 10, {}, False),
])
def test_classification_client_keeps_the_last_batch_by_default(network, training, config, dropped):
    client = classification_client(network, training, **config)
    seen = sum(len(batch["label"]) for batch in client.train_loader)
    assert client.train_loader.drop_last is dropped
    assert seen == (training // 4 * 4 if dropped else training)
