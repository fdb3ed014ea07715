"""HarmoFL prostate data: the demo's extra sites, SAML preparation, 2.5-D samples, splits, augmentation."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medfl.common.errors import DataError
from medfl.federations.prostate2d.demo import SITE_STYLES, make_demo_federation
from medfl.federations.prostate_saml.data import load_prostate_samples, prostate_dataset, prostate_train_augmentation
from medfl.federations.prostate_saml.preparation import (
    DATALIST_DIR,
    DATASET_DIR,
    HARMOFL_PROSTATE_SITES,
    client_name,
    prepare,
    split_slices,
    to_uint8,
)


def test_extra_demo_sites_leave_the_original_three_unchanged(tmp_path):
    make_demo_federation(tmp_path / "default", cases_per_site=1, seed=0)
    make_demo_federation(tmp_path / "harmofl", cases_per_site=1, seed=0, sites=("UCL", "I2CVB", "MSD", "BIDMC"))
    for site in ("I2CVB", "MSD"):
        for name in ("Case00.nii.gz", "Case00_segmentation.nii.gz"):
            default, extended = (tmp_path / run / site / name for run in ("default", "harmofl"))
            assert default.read_bytes() == extended.read_bytes()
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == sorted(SITE_STYLES)
    with pytest.raises(ValueError, match="unknown demo site"):
        make_demo_federation(tmp_path / "bad", sites=("Nowhere",))


def test_uint8_scaling_is_the_released_one():
    volume = np.random.default_rng(0).gamma(2.0, 100.0, (8, 8, 5)).astype(np.float32)
    high = np.quantile(volume, 0.99)
    expected = ((np.minimum(volume, high) - volume.min()) / (high - volume.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(volume), expected)


def test_slice_level_split_cuts_a_seeded_permutation_as_the_released_code():
    items = [{"slice": i} for i in range(261)]  # BIDMC's slice count
    split = split_slices(items, (0.64, 0.16, 0.2), seed=3)
    assert [len(split[s]) for s in ("training", "validation", "testing")] == [167, 41, 53]
    assert sorted(i["slice"] for part in split.values() for i in part) == list(range(261))
    assert split == split_slices(items, (0.64, 0.16, 0.2), seed=3)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("harmofl_prostate")
    make_demo_federation(root / "raw", cases_per_site=3, seed=0, sites=HARMOFL_PROSTATE_SITES)
    return root


@pytest.mark.parametrize("level", ["slice", "patient"])
def test_prepare_writes_six_clients_of_25d_samples(demo_root, tmp_path, level):
    summary = prepare(demo_root / "raw", tmp_path, size=16, split_level=level)
    assert list(summary) == [client_name(s) for s in HARMOFL_PROSTATE_SITES]
    assert "client_ISBI_1_5" in summary
    for client, counts in summary.items():
        datalist = json.loads((tmp_path / DATALIST_DIR / f"{client}.json").read_text())
        cases = {s: {item["image"].split("/")[1] for item in items} for s, items in datalist.items()}
        if level == "patient":
            assert not (cases["training"] & cases["validation"] or cases["training"] & cases["testing"]
                        or cases["validation"] & cases["testing"]), f"{client}: a case in two splits"
        else:
            n = sum(counts.values())
            assert counts["training"] == int(0.64 * n) and counts["validation"] == int(0.8 * n) - int(0.64 * n)
        item = datalist["training"][0]
        label = nib.load(str(tmp_path / DATASET_DIR / item["label"])).get_fdata()
        image = nib.load(str(tmp_path / DATASET_DIR / item["image"]))
        assert image.get_data_dtype() == np.uint8 and image.shape == label.shape and image.shape[:2] == (16, 16)
        centres = [i["slice"] for items in datalist.values() for i in items if i["image"] == item["image"]]
        expected = [z for z in range(1, label.shape[2] - 1) if label[:, :, z].any()]
        assert sorted(centres) == expected, "every slice 1..D-2 with prostate, and only those"


def test_real_promise12_case_gives_25d_samples(shared_data, tmp_path):
    source = shared_data / "prostate_promise12"
    summary = prepare(source.parent, tmp_path, sites=[source.name], size=0, fractions=(1.0, 0.0, 0.0))
    items = json.loads((tmp_path / DATALIST_DIR / f"client_{source.name}.json").read_text())["training"]
    assert summary[f"client_{source.name}"]["training"] == len(items) == 34
    samples = load_prostate_samples(items, tmp_path / DATASET_DIR, "site")
    volume = np.asarray(nib.load(str(tmp_path / DATASET_DIR / items[0]["image"])).dataobj)
    z = items[0]["slice"]
    assert samples[0]["image"].shape == (3, 128, 128) and samples[0]["image"].dtype == np.uint8
    np.testing.assert_array_equal(samples[0]["image"][1], volume[:, :, z])
    np.testing.assert_array_equal(samples[0]["image"][0], volume[:, :, z - 1])
    assert samples[0]["label"].shape == (1, 128, 128) and samples[0]["label"].any()
    item = prostate_dataset(items[:1], tmp_path / DATASET_DIR)[0]
    assert item["image"].dtype == torch.float32 and item["image"].max() == 255
    with pytest.raises(DataError, match="no neighbour"):
        load_prostate_samples([{**items[0], "slice": 0}], tmp_path / DATASET_DIR, "site")
    with pytest.raises(DataError, match=r"\[site\].*not found"):
        load_prostate_samples([{**items[0], "image": "missing.nii.gz"}], tmp_path / DATASET_DIR, "site")


def test_augmentation_moves_image_and_label_together():
    label = torch.zeros(1, 8, 8)
    label[0, 1, :3] = 1
    image = torch.cat([label * 200, label * 100, label * 50])
    augment = prostate_train_augmentation()
    outcomes = set()
    for seed in range(40):
        augment.set_random_state(seed)
        out = augment({"image": image.clone(), "label": label.clone()})
        np.testing.assert_array_equal(np.asarray(out["image"][0]), np.asarray(out["label"][0]) * 200)
        outcomes.add(tuple(np.asarray(out["label"]).ravel().nonzero()[0]))
    assert len(outcomes) > 4, "rotations and flips both happen"
