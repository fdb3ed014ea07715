"""Prostate data preparation: demo federation, 3D -> 2D slicing, splits by case, real PROMISE12 volume, errors."""

import json

import nibabel as nib
import numpy as np
import pytest

from medfl.common.errors import DataError
from medfl.federations.prostate2d.demo import SITE_STYLES, make_demo_federation, synthesize_case
from medfl.federations.prostate2d.preparation import find_cases, prepare, split_cases


def test_demo_federation_is_deterministic_and_sites_differ():
    a = synthesize_case(SITE_STYLES["MSD"], np.random.default_rng([0, 1]))
    b = synthesize_case(SITE_STYLES["MSD"], np.random.default_rng([0, 1]))
    np.testing.assert_array_equal(a[0], b[0])
    means = {site: synthesize_case(style, np.random.default_rng(0))[0].mean() for site, style in SITE_STYLES.items()}
    assert max(means.values()) / min(means.values()) > 2, f"site intensity scales too similar: {means}"


def test_prepare_writes_case_level_splits(demo_prostate):
    datalists = demo_prostate / "datalist_2D"
    assert sorted(p.name for p in datalists.iterdir()) == [
        "client_All.json", "client_I2CVB.json", "client_MSD.json", "client_NCI_ISBI_3T.json"]
    everything = json.loads((datalists / "client_All.json").read_text())
    for site in ("I2CVB", "MSD", "NCI_ISBI_3T"):
        datalist = json.loads((datalists / f"client_{site}.json").read_text())
        cases = {split: {item["image"].split("/")[1] for item in items} for split, items in datalist.items()}
        assert all(cases.values()), f"{site}: an empty split {cases}"
        assert not (cases["training"] & cases["validation"] or cases["training"] & cases["testing"]
                    or cases["validation"] & cases["testing"]), f"{site}: a case in two splits"
        for split, items in datalist.items():
            assert all(item in everything[split] for item in items)
            for item in items[:3]:
                image = nib.load(str(demo_prostate / "dataset_2D" / item["image"])).get_fdata()
                label = nib.load(str(demo_prostate / "dataset_2D" / item["label"])).get_fdata()
                assert image.shape == label.shape == (32, 32)
                assert 0.0 <= image.min() and image.max() <= 1.0
                assert label.any(), "by default only slices with prostate are kept"


def test_split_is_seeded_and_covers_all_cases():
    cases = [f"Case{i:02d}" for i in range(10)]
    a, b = split_cases(cases, (0.5, 0.25, 0.25), seed=0), split_cases(cases, (0.5, 0.25, 0.25), seed=0)
    assert a == b
    assert sorted(sum(a.values(), [])) == cases
    assert [len(a[s]) for s in ("training", "validation", "testing")] == [6, 2, 2]


def test_real_promise12_case(shared_data, tmp_path):
    source = shared_data / "prostate_promise12"
    summary = prepare(source.parent, tmp_path, source="saml", sites=[source.name], size=0, fractions=(1.0, 0.0, 0.0))
    assert summary[source.name]["training"] == 34
    all_slices = prepare(source.parent, tmp_path / "all", source="saml", sites=[source.name], size=0,
                         all_slices=True, fractions=(1.0, 0.0, 0.0))
    assert all_slices[source.name]["training"] == 64


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
    prepare(tmp_path / "raw", tmp_path, source="saml", sites=["I2CVB", "NCI_ISBI_3T:ISBI"], size=16)
    prepare(tmp_path / "raw", tmp_path, source="saml", sites=["MSD"], size=16)
    names = sorted(p.name for p in (tmp_path / "datalist_2D").iterdir())
    assert names == ["client_All.json", "client_I2CVB.json", "client_ISBI.json", "client_MSD.json"]
    union = json.loads((tmp_path / "datalist_2D" / "client_All.json").read_text())
    per_site = [json.loads((tmp_path / "datalist_2D" / n).read_text()) for n in names if n != "client_All.json"]
    assert len(union["training"]) == sum(len(d["training"]) for d in per_site)
