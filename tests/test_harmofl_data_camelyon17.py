"""Camelyon17 for HarmoFL: WILDS layout written and read back, splits, dataset, errors, demo hospitals."""

import csv
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from medfl.common.errors import DataError
from medfl.federations.camelyon17.data import (
    Camelyon17Dataset,
    PatchRecord,
    camelyon17_datasets,
    cap_records,
    load_patch,
    read_metadata,
    split_hospital,
)
from medfl.federations.camelyon17.demo import HOSPITAL_STYLES, make_demo_camelyon17
from medfl.federations.camelyon17.preparation import DATALIST_DIR, prepare
from medfl.harmofl.amp_norm import AmplitudeNormalize, amplitude_spectrum

SLIDES, PATCHES = 3, 6
HOSPITALS = [f"hospital{k}" for k in range(1, 6)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo federation (3 slides x 6 patches per hospital) and its prepared datalists."""
    root = tmp_path_factory.mktemp("camelyon17")
    make_demo_camelyon17(root / "raw", slides_per_hospital=SLIDES, patches_per_slide=PATCHES, seed=0)
    prepare(root / "raw", root)
    return root


@pytest.fixture(scope="module")
def hospital_patches(demo):
    """``{site: (images (N, 3, 96, 96), labels (N,))}`` of the whole demo."""
    by_site = {}
    for record in read_metadata(demo / "raw"):
        by_site.setdefault(f"hospital{record.center + 1}", []).append(record)
    return {site: (torch.stack([load_patch(demo / "raw" / r.image) for r in records]),
                   np.array([r.label for r in records])) for site, records in by_site.items()}


def test_demo_writes_the_wilds_layout(demo):
    with (demo / "raw" / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["", "patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]
    assert len(rows) == 5 * SLIDES * PATCHES
    row = rows[0]
    patch = demo / "raw" / (f"patches/patient_{int(row['patient']):03d}_node_{row['node']}/patch_patient_"
                            f"{int(row['patient']):03d}_node_{row['node']}_x_{row['x_coord']}_y_{row['y_coord']}.png")
    with Image.open(patch) as image:
        assert (image.mode, image.size) == ("RGB", (96, 96))
    records = read_metadata(demo / "raw")
    assert all((demo / "raw" / r.image).is_file() for r in records)
    assert sorted({r.center for r in records}) == [0, 1, 2, 3, 4]
    assert [sum(r.label for r in records if r.center == c) for c in range(5)] == [SLIDES * PATCHES // 2] * 5


def test_demo_is_deterministic(tmp_path):
    for name in ("a", "b"):
        make_demo_camelyon17(tmp_path / name, slides_per_hospital=1, patches_per_slide=2, seed=7)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 * 2 + 1
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    make_demo_camelyon17(tmp_path / "c", slides_per_hospital=1, patches_per_slide=2, seed=8)
    patch = next(rel for rel in files if rel.suffix == ".png")
    assert (tmp_path / "c" / patch).read_bytes() != (tmp_path / "a" / patch).read_bytes()


def test_prepared_datalists_read_back_as_datasets(demo):
    assert sorted(p.name for p in (demo / DATALIST_DIR).iterdir()) == [f"{s}.json" for s in HOSPITALS]
    datasets = camelyon17_datasets(demo / DATALIST_DIR, demo / "raw", "hospital3")
    assert {split: len(d) for split, d in datasets.items()} == {"training": 10, "validation": 2, "testing": 6}
    item = datasets["training"][1]
    assert item["image"].shape == (3, 96, 96) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["label"].dtype == torch.int64 and item["label"].shape == ()
    # ToTensor semantics: the uint8 pixels divided by 255, channels first
    path = demo / "raw" / json.loads((demo / DATALIST_DIR / "hospital3.json").read_text())["training"][1]["image"]
    pixels = np.array(Image.open(path)).transpose(2, 0, 1)
    torch.testing.assert_close(item["image"] * 255, torch.from_numpy(pixels).float())


def test_default_split_holds_out_whole_slides_and_validates_on_the_last_20_percent(demo):
    records = [r for r in read_metadata(demo / "raw") if r.center == 0]
    for site in HOSPITALS:
        datalist = json.loads((demo / DATALIST_DIR / f"{site}.json").read_text())
        slides = {split: {item["slide"] for item in items} for split, items in datalist.items()}
        assert not slides["testing"] & (slides["training"] | slides["validation"]), site
        assert len(slides["testing"]) == 1  # round(0.2 * 3 slides) by largest remainder
    splits = split_hospital(records, "hospital1", seed=0)
    train = [r for r in records if r not in splits["testing"]]  # metadata order
    assert splits["validation"] == train[-(len(train) // 5):]
    assert splits["training"] == train[: -(len(train) // 5)]


def _records(slides=10, patches=5):
    return [PatchRecord(f"patches/s{s}/p{p}.png", p % 2, 0, f"s{s}") for s in range(slides) for p in range(patches)]


def test_splits_are_disjoint_complete_and_seeded():
    records = _records()
    splits = split_hospital(records, "hospital1", seed=0)
    images = {name: {r.image for r in part} for name, part in splits.items()}
    assert sum(len(v) for v in images.values()) == len(records) == len(set.union(*images.values()))
    assert len({r.slide for r in splits["testing"]}) == 2
    assert split_hospital(records, "hospital1", seed=0) == splits
    seeds = {tuple(r.slide for r in split_hospital(records, "hospital1", seed=s)["testing"]) for s in range(5)}
    assert len(seeds) > 1, "the seed must change the held-out slides"
    assert split_hospital(records, "hospital2", seed=0) != splits, "each hospital draws its own slides"


def test_patch_level_split_and_cap():
    records = _records()
    splits = split_hospital(records, "hospital1", seed=0, test_unit="patch")
    assert len(splits["testing"]) == 10 and len(splits["validation"]) == 8 and len(splits["training"]) == 32
    capped = cap_records(records, 12, seed=0, site="hospital1")
    assert len(capped) == 12 and capped == sorted(capped, key=records.index)
    assert cap_records(records, 12, seed=0, site="hospital1") == capped
    assert cap_records(records, None, seed=0, site="hospital1") == records
    with pytest.raises(ValueError, match="test_unit"):
        split_hospital(records, "hospital1", test_unit="patient")


def test_too_few_slides_is_a_clear_error():
    with pytest.raises(DataError, match=r"\[hospital4\] too few patches or slides for a non-empty testing split"):
        split_hospital(_records(slides=2), "hospital4")


def _write_metadata(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    lines = [",patient,node,x_coord,y_coord,tumor,slide,center,split"] + [",".join(map(str, r)) for r in rows]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("row, message", [
    ((0, 4, 4, 10, 20, 2, 0, 1, 0), r"\[hospital2\] .*metadata\.csv: line 2: tumor label 2 out of range 0\.\.1"),
    ((0, 4, 4, 10, 20, 1, 0, 5, 0), r"metadata\.csv: line 2: center 5 out of range 0\.\.4"),
    ((0, 4, 4, "x", 20, 1, 0, 0, 0), r"metadata\.csv: line 2: non-integer value"),
])
def test_bad_metadata_rows_are_named(tmp_path, row, message):
    _write_metadata(tmp_path, [row])
    with pytest.raises(DataError, match=message):
        read_metadata(tmp_path)


def test_missing_metadata_or_column(tmp_path):
    with pytest.raises(DataError, match=r"metadata\.csv: Camelyon17 metadata not found"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.csv").write_text("patient,node,tumor\n1,2,0\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['x_coord', 'y_coord', 'center'\]"):
        read_metadata(tmp_path)


def test_missing_patch_names_hospital_and_file(tmp_path):
    _write_metadata(tmp_path, [(0, 4, 4, 10, 20, 1, 0, 2, 0)])
    with pytest.raises(DataError, match=r"\[hospital3\] .*patch_patient_004_node_4_x_10_y_20\.png: patch listed"):
        prepare(tmp_path, tmp_path / "out")


def test_bad_patches_and_labels_name_site_and_file(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(tmp_path / "grey.png")
    items = [{"image": name, "label": 1} for name in ("corrupt.png", "small.png", "grey.png")]
    dataset = Camelyon17Dataset(items, tmp_path, site="hospital5")
    with pytest.raises(DataError, match=r"\[hospital5\] .*corrupt\.png: cannot read image"):
        dataset[0]
    with pytest.raises(DataError, match=r"\[hospital5\] .*small\.png: expected an 8-bit RGB 96x96 patch"):
        dataset[1]
    with pytest.raises(DataError, match=r"\[hospital5\] .*grey\.png: expected an 8-bit RGB 96x96 patch"):
        dataset[2]
    for label in (2, -1, "1", True):
        with pytest.raises(DataError, match=rf"\[hospital5\] .*a\.png: label {label!r} out of range"):
            Camelyon17Dataset([{"image": "a.png", "label": label}], tmp_path, site="hospital5")


def test_demo_hospitals_differ_in_colour_and_amplitude_spectrum(hospital_patches):
    assert set(hospital_patches) == set(HOSPITAL_STYLES)
    colour = {site: x.mean(dim=(0, 2, 3)) for site, (x, _) in hospital_patches.items()}
    spectrum = {site: amplitude_spectrum(x).mean(0) for site, (x, _) in hospital_patches.items()}
    for a, b in itertools.combinations(hospital_patches, 2):
        assert (colour[a] - colour[b]).abs().max() > 0.05, (a, b, colour[a], colour[b])
        sa, sb = spectrum[a].clone(), spectrum[b].clone()
        sa[:, 0, 0] = sb[:, 0, 0] = 0  # beyond the mean colour: texture, blur and noise
        assert (sa - sb).norm() / ((sa + sb) / 2).norm() > 0.1, (a, b)


def test_demo_classes_differ_within_each_hospital_but_not_by_one_global_threshold(hospital_patches):
    brightness = {site: (x.mean(dim=(1, 2, 3)).numpy(), y) for site, (x, y) in hospital_patches.items()}
    for site, (value, label) in brightness.items():
        assert value[label == 1].max() < value[label == 0].min(), f"{site}: tumour patches must be darker"
    darkest_normal = min(value[label == 0].min() for value, label in brightness.values())
    brightest_tumour = max(value[label == 1].max() for value, label in brightness.values())
    assert brightest_tumour > darkest_normal, "the hospitals' styles should overlap the classes across sites"


def test_amplitude_normalisation_removes_the_hospitals_mean_colour_spread(hospital_patches):
    reference = torch.stack([amplitude_spectrum(x).mean(0) for x, _ in hospital_patches.values()]).mean(0)
    normalise = AmplitudeNormalize(reference, mode="paper")
    before = torch.stack([x.mean(dim=(0, 2, 3)) for x, _ in hospital_patches.values()])
    after = torch.stack([normalise(x).mean(dim=(0, 2, 3)) for x, _ in hospital_patches.values()])
    assert before.std(0).min() > 0.03 and after.std(0).max() < 1e-4
