"""Prostate data preparation: the original's intensity rule and split, demo federation, 3D -> 2D slicing, the
clients' transform, real PROMISE12 volume, errors."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medfl.common.errors import DataError
from medfl.federations.prostate2d.demo import SITE_STYLES, make_demo_federation, synthesize_case
from medfl.federations.prostate2d.preparation import (
    MAX_INTENSITY,
    find_cases,
    fixed_intensity,
    prepare,
    split_cases,
    to_8bit,
)
from medfl.federations.prostate2d.slices import load_slices, slice_transform


def test_demo_federation_is_deterministic_and_sites_differ():
    a = synthesize_case(SITE_STYLES["MSD"], np.random.default_rng([0, 1]))
    b = synthesize_case(SITE_STYLES["MSD"], np.random.default_rng([0, 1]))
    np.testing.assert_array_equal(a[0], b[0])
    means = {site: synthesize_case(style, np.random.default_rng(0))[0].mean() for site, style in SITE_STYLES.items()}
    assert max(means.values()) / min(means.values()) > 2, f"site intensity scales too similar: {means}"


def test_prepare_writes_case_level_splits_of_8bit_slices(demo_prostate):
    datalists = demo_prostate / "datalist_2D"
    assert sorted(p.name for p in datalists.iterdir()) == [
        "client_All.json", "client_I2CVB.json", "client_MSD.json", "client_NCI_ISBI_3T.json"]
    everything = json.loads((datalists / "client_All.json").read_text())
    for site in ("I2CVB", "MSD", "NCI_ISBI_3T"):
        datalist = json.loads((datalists / f"client_{site}.json").read_text())
        cases = {split: {item["image"].split("/")[1] for item in items} for split, items in datalist.items()}
        assert [len(cases[s]) for s in ("training", "validation", "testing")] == [3, 2, 1], f"{site}: {cases}"
        assert not (cases["training"] & cases["validation"] or cases["training"] & cases["testing"]
                    or cases["validation"] & cases["testing"]), f"{site}: a case in two splits"
        for split, items in datalist.items():
            assert all(item in everything[split] for item in items)
            for item in items[:3]:
                image = nib.load(str(demo_prostate / "dataset_2D" / item["image"]))
                label = nib.load(str(demo_prostate / "dataset_2D" / item["label"]))
                assert image.get_data_dtype() == label.get_data_dtype() == np.uint8
                size = SITE_STYLES[site].matrix
                assert image.shape == label.shape == (size, size), "the volume's own size: the clients resize"
                assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1}
                assert np.asarray(label.dataobj).any(), "by default only slices with prostate are kept"


def _original_split(n, seed=0):
    """prepare_data_split.py, verbatim in effect: np.random.seed at import, shuffle of arange(n), round() cuts."""
    np.random.seed(seed)
    index = np.arange(n)
    np.random.shuffle(index)
    train_cut, val_cut = round(n * 0.5), round(n * 0.5) + round(n * 0.25)
    return index[:train_cut].tolist(), index[train_cut:val_cut].tolist(), index[val_cut:].tolist()


@pytest.mark.parametrize("n, sizes", [(39, (20, 10, 9)), (32, (16, 8, 8)), (40, (20, 10, 10)), (6, (3, 2, 1)),
                                      (8, (4, 2, 2)), (3, (2, 1, 0)), (5, (2, 1, 2))])
def test_split_is_the_originals(n, sizes):
    """The sorted cases in the order of numpy's legacy generator seeded with 0, cut at round(n/2) and
    round(n/2) + round(n/4) (the original's I2CVB 39 / MSD 32 / NCI_ISBI_3T 40 cases: 20/10/9, 16/8/8, 20/10/10)."""
    cases = [f"Case{i:02d}" for i in range(n)]
    shuffled_input = list(reversed(cases))  # the input order does not matter: the cases are sorted first
    split = split_cases(shuffled_input)
    assert tuple(len(split[s]) for s in ("training", "validation", "testing")) == sizes
    assert [[cases.index(c) for c in split[s]] for s in ("training", "validation", "testing")] == list(_original_split(n))
    assert split_cases(cases, seed=1) != split, "the seed changes the shuffle"


def test_fixed_intensity_rule_is_the_originals():
    """image / 2048, values above 1 set to 1, x255 and PIL's 8-bit conversion (truncation)."""
    volume = np.array([0.0, 8.04, 1024.0, 2047.9, 2048.0, 5000.0, 300.7, -3.0])
    ours = to_8bit(fixed_intensity(volume))
    scaled = volume / MAX_INTENSITY
    scaled[scaled > 1] = 1
    pil = np.asarray(Image.fromarray((scaled * 255)[None]).convert("L"))[0]
    np.testing.assert_array_equal(ours, pil)
    assert ours.dtype == np.uint8 and ours.tolist() == [0, 1, 127, 254, 255, 255, 37, 0]


def test_demo_sites_are_meaningful_under_the_fixed_rule(demo_prostate):
    """After /2048 no site is all dark or all clipped, and the gland stands out from its surroundings."""
    for site in ("I2CVB", "MSD", "NCI_ISBI_3T"):
        datalist = json.loads((demo_prostate / "datalist_2D" / f"client_{site}.json").read_text())
        images, labels = [], []
        for item in datalist["training"]:
            images.append(np.asarray(nib.load(str(demo_prostate / "dataset_2D" / item["image"])).dataobj))
            labels.append(np.asarray(nib.load(str(demo_prostate / "dataset_2D" / item["label"])).dataobj) > 0)
        image, gland = np.stack(images).astype(float), np.stack(labels)
        assert 20 <= np.median(image[gland]) <= 200, f"{site}: gland level {np.median(image[gland])}"
        assert np.mean(image >= 255) < 0.03, f"{site}: {np.mean(image >= 255):.3f} of the voxels clipped"
        assert np.percentile(image, 99) > 60, f"{site}: too dark"


def test_the_clients_transform_is_the_originals(demo_prostate):
    """0..255 -> 0..1, bilinear resize with align_corners=True of image and label, label thresholded at 0.5."""
    datalist = json.loads((demo_prostate / "datalist_2D" / "client_MSD.json").read_text())
    item = datalist["training"][0]
    stored = np.asarray(nib.load(str(demo_prostate / "dataset_2D" / item["image"])).dataobj).astype(np.float32)
    mask = np.asarray(nib.load(str(demo_prostate / "dataset_2D" / item["label"])).dataobj).astype(np.float32)
    (pair,) = load_slices([item], demo_prostate / "dataset_2D", "client_MSD", image_size=48)
    resize = lambda a: torch.nn.functional.interpolate(torch.from_numpy(a)[None, None], size=(48, 48),  # noqa: E731
                                                       mode="bilinear", align_corners=True)[0].numpy()
    np.testing.assert_allclose(pair["image"], resize(stored / 255), atol=1e-6)
    np.testing.assert_array_equal(pair["label"], (resize(mask) > 0.5).astype(np.float32))
    assert pair["image"].shape == pair["label"].shape == (1, 48, 48) and pair["image"].dtype == np.float32
    kept = slice_transform(0)({"image": stored[None], "label": mask[None]})
    assert tuple(kept["image"].shape) == (1, *stored.shape), "image_size 0 keeps the stored size"
    with pytest.raises(ValueError, match="resize_mode"):
        slice_transform(32, "bicubic")


def test_slices_that_are_not_8bit_are_refused(tmp_path):
    """A [0, 1] float slice of an earlier preparation would be scaled to black: a clear error instead."""
    site = tmp_path / "SITE" / "Case00"
    site.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.full((4, 4), 0.5, np.float32), np.eye(4)), str(site / "image_000.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((4, 4), np.uint8), np.eye(4)), str(site / "label_000.nii.gz"))
    item = {"image": "SITE/Case00/image_000.nii.gz", "label": "SITE/Case00/label_000.nii.gz"}
    with pytest.raises(DataError, match=r"^\[client_SITE\] .*image_000.nii.gz: intensities must be 8-bit integers "
                                        r"0..255 \(found 0.5..0.5, not integers\); re-run"):
        load_slices([item], tmp_path, "client_SITE")


def test_real_promise12_case(shared_data, tmp_path):
    """The real volume (128x128x64, values up to 9634, 99th percentile about 1260): 34 slices with prostate, at
    its own size, 8-bit by the fixed rule (the brightest 0.3 % of voxels clip)."""
    source = shared_data / "prostate_promise12"
    summary = prepare(source.parent, tmp_path, source="saml", sites=[source.name], fractions=(1.0, 0.0, 0.0))
    assert summary[source.name]["training"] == 34
    datalist = json.loads((tmp_path / "datalist_2D" / f"client_{source.name}.json").read_text())
    image = nib.load(str(tmp_path / "dataset_2D" / datalist["training"][17]["image"]))
    assert image.shape == (128, 128) and image.get_data_dtype() == np.uint8
    volume = np.asarray(nib.load(str(source / "Case00.nii.gz")).dataobj)
    z = int(datalist["training"][17]["image"].rsplit("_", 1)[1].split(".")[0])
    np.testing.assert_array_equal(np.asarray(image.dataobj), to_8bit(fixed_intensity(volume[:, :, z])))
    all_slices = prepare(source.parent, tmp_path / "all", source="saml", sites=[source.name], all_slices=True,
                         fractions=(1.0, 0.0, 0.0))
    assert all_slices[source.name]["training"] == 64
    percentile = prepare(source.parent, tmp_path / "pct", source="saml", sites=[source.name], size=64,
                         intensity="percentile", fractions=(1.0, 0.0, 0.0))
    assert percentile[source.name]["training"] == 34
    item = json.loads((tmp_path / "pct" / "datalist_2D" / f"client_{source.name}.json").read_text())["training"][0]
    resized = np.asarray(nib.load(str(tmp_path / "pct" / "dataset_2D" / item["image"])).dataobj)
    assert resized.shape == (64, 64) and resized.dtype == np.uint8


def test_pairing_is_by_case_id_and_unpaired_files_are_named(tmp_path):
    site = tmp_path / "SITE"
    make_demo_federation(tmp_path / "raw", cases_per_site=2)
    site.mkdir()
    for name in ("Case01.nii.gz", "Case00_segmentation.nii.gz", "Case00.nii.gz"):
        (site / name).write_bytes((tmp_path / "raw" / "MSD" / name).read_bytes())
    with pytest.raises(DataError, match=r"\[SITE\].*Case01.nii.gz: no mask for case 'Case01'"):
        find_cases(site, "saml", "SITE")
    (site / "Case01.nii.gz").unlink()
    assert [c for c, _, _ in find_cases(site, "saml", "SITE")] == ["Case00"]


def test_shape_mismatch_and_empty_site_are_clear_errors(tmp_path):
    site = tmp_path / "raw" / "BAD"
    site.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), str(site / "Case00.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5), np.uint8), np.eye(4)), str(site / "Case00_segmentation.nii.gz"))
    with pytest.raises(DataError, match=r"\[BAD\].*Case00.nii.gz: image shape \(8, 8, 4\) does not match mask"):
        prepare(tmp_path / "raw", tmp_path / "out", source="saml")
    (site / "Case00.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="cannot read NIfTI"):
        prepare(tmp_path / "raw", tmp_path / "out", source="saml")
    empty = tmp_path / "empty" / "NOTHING"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match=r"\[NOTHING\].*no NIfTI volumes"):
        prepare(tmp_path / "empty", tmp_path / "out", source="saml")
    assert not (tmp_path / "out" / "datalist_2D").exists(), "a failed preparation must not leave datalists"


def test_sites_prepared_by_two_commands_are_pooled_and_renamed(tmp_path):
    make_demo_federation(tmp_path / "raw", cases_per_site=3)
    prepare(tmp_path / "raw", tmp_path, source="saml", sites=["I2CVB", "NCI_ISBI_3T:ISBI"])
    prepare(tmp_path / "raw", tmp_path, source="saml", sites=["MSD"])
    names = sorted(p.name for p in (tmp_path / "datalist_2D").iterdir())
    assert names == ["client_All.json", "client_I2CVB.json", "client_ISBI.json", "client_MSD.json"]
    union = json.loads((tmp_path / "datalist_2D" / "client_All.json").read_text())
    per_site = [json.loads((tmp_path / "datalist_2D" / n).read_text()) for n in names if n != "client_All.json"]
    assert len(union["training"]) == sum(len(d["training"]) for d in per_site)
