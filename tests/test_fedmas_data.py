"""Fed-ISIC2019 preparation (FLamby layout and the HAM10000 demo) and the skin-lesion dataset."""

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from medfl.common.errors import DataError
from medfl.common.io import atomic_path
from medfl.federations.isic2019 import preparation
from medfl.federations.isic2019.data import ISIC_CLASSES, SkinLesionDataset, read_datalist

SPLITS = ("train", "valid", "test")


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def demo(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_isic")
    ham = str(shared_data / "ham10000_mini")
    preparation.main(["demo", "--ham-dir", ham, "--out", str(out), "--image-size", "32"])
    return out


def test_demo_has_flamby_centres_and_no_lesion_in_two_splits(demo):
    assert sorted(p.name for p in demo.iterdir() if p.is_dir()) == ["center_1", "center_2", "center_3", "center_5"]
    lesions = {split: set() for split in SPLITS}
    for center in ("center_1", "center_2", "center_3", "center_5"):
        for split in SPLITS:
            rows = read_rows(demo / center / f"{split}.csv")
            assert rows, f"{center}/{split}.csv is empty"
            assert all((demo / center / row["image"]).is_file() for row in rows)
            lesions[split] |= {row["lesion_id"] for row in rows}
    assert not lesions["train"] & lesions["valid"]
    assert not lesions["train"] & lesions["test"]
    assert not lesions["valid"] & lesions["test"]


def test_demo_summary_matches_datalists_and_maps_ham_labels(demo):
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["classes"] == list(ISIC_CLASSES)
    for center, counts in summary["class_counts"].items():
        for split in SPLITS:
            dataset = SkinLesionDataset(demo / center / f"{split}.csv", image_size=32)
            assert dataset.class_counts() == counts[split]
    total = sum(sum(c[s]) for c in summary["class_counts"].values() for s in SPLITS)
    assert total == 481
    scc = ISIC_CLASSES.index("SCC")  # HAM10000 has no SCC
    assert all(c[s][scc] == 0 for c in summary["class_counts"].values() for s in SPLITS)
    # vidir_molemax is ~94 % nevi: the label skew survives the mapping
    molemax = summary["class_counts"]["center_1"]["train"]
    assert molemax[ISIC_CLASSES.index("NV")] / sum(molemax) > 0.8


def test_dataset_returns_normalised_tensors_and_labels(demo):
    pooled = SkinLesionDataset([demo / c / "test.csv" for c in ("center_1", "center_5")], image_size=32)
    item = pooled[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() < 0 and isinstance(item["label"], int)
    train = SkinLesionDataset(demo / "center_2" / "train.csv", image_size=24, train=True)
    augmented = train[0]["image"]
    assert augmented.shape == (3, 24, 24) and torch.isfinite(augmented).all()


def test_datalist_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("path,label\nx.jpg,1\n")
    with pytest.raises(DataError, match=r"\[center_1\] .*train\.csv: missing columns \['image'\]"):
        read_datalist(bad, site="center_1")
    bad.write_text("image,label\nx.jpg,1\ny.jpg,9\n")
    with pytest.raises(DataError, match=r"train\.csv: line 3: label 9 outside 0..7"):
        read_datalist(bad)
    bad.write_text("image,label\nmissing.jpg,1\n")
    with pytest.raises(DataError, match=r"\[center_2\] .*missing\.jpg: image not found"):
        SkinLesionDataset(bad, image_size=8, site="center_2")[0]


def make_isic_layout(root):
    """A tiny ISIC 2019 release: 2 centres x (10 train + 3 test) images, lesion ids on some images."""
    images = root / "ISIC_2019_Training_Input"
    images.mkdir(parents=True)
    truth, meta, split = [], [], []
    for index in range(26):
        name = f"ISIC_{index:07d}"
        Image.new("RGB", (40, 30), color=(index * 9, 100, 50)).save(images / f"{name}.jpg")
        label = index % 3
        truth.append([name] + [1.0 if c == label else 0.0 for c in range(8)] + [0.0])
        meta.append([name, 50, "torso", f"L{index // 2}" if index < 12 else "", "male"])
        split.append([name, index % 2, "test" if index >= 20 else "train"])
    with open(root / "ISIC_2019_Training_GroundTruth.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([["image", *ISIC_CLASSES, "UNK"], *truth])
    with open(root / "ISIC_2019_Training_Metadata.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([["image", "age_approx", "anatom_site_general", "lesion_id", "sex"], *meta])
    with open(root / "train_test_split", "w", newline="") as stream:
        csv.writer(stream).writerows([["image", "center", "fold"], *split])
    return split


def test_isic_valid_comes_from_flamby_train_and_test_is_flamby_test(tmp_path):
    split = make_isic_layout(tmp_path / "isic")
    out = tmp_path / "out"
    args = ["isic", "--isic-dir", str(tmp_path / "isic"), "--split-file", str(tmp_path / "isic" / "train_test_split")]
    preparation.main([*args, "--out", str(out), "--image-size", "16", "--valid-fraction", "0.3"])
    for center in (0, 1):
        names = {s: {Path(r["image"]).stem for r in read_rows(out / f"center_{center}" / f"{s}.csv")} for s in SPLITS}
        flamby = {fold: {n for n, c, f in split if c == center and f == fold} for fold in ("train", "test")}
        assert names["test"] == flamby["test"]
        assert names["valid"] and names["train"] | names["valid"] == flamby["train"]
        assert not names["train"] & names["valid"]
        lesions = {s: {r["lesion_id"] for r in read_rows(out / f"center_{center}" / f"{s}.csv")} for s in SPLITS}
        assert not lesions["train"] & lesions["valid"]
    with Image.open(next((out / "center_0" / "images").iterdir())) as image:
        assert image.size == (16, 16)


def test_isic_errors_name_the_file(tmp_path):
    make_isic_layout(tmp_path / "isic")
    truth = tmp_path / "isic" / "ISIC_2019_Training_GroundTruth.csv"
    rows = truth.read_text().splitlines()
    rows[1] = "ISIC_0000000," + ",".join(["0.0"] * 8) + ",1.0"  # an UNK image
    truth.write_text("\n".join(rows) + "\n")
    args = ["isic", "--isic-dir", str(tmp_path / "isic"), "--out", str(tmp_path / "out")]
    # the command exits with one line "error: <file>: <problem>"
    with pytest.raises(SystemExit, match=r"^error: .*GroundTruth\.csv: image ISIC_0000000 has 0 of the 8 classes set"):
        preparation.main([*args, "--split-file", str(tmp_path / "isic" / "train_test_split")])
    bad_split = tmp_path / "split.csv"
    bad_split.write_text("image,centre,fold\n")
    with pytest.raises(SystemExit, match=r"^error: .*split\.csv: missing columns \['center'\]"):
        preparation.main([*args, "--split-file", str(bad_split)])


def test_atomic_path_leaves_the_target_untouched_on_error(tmp_path):
    target = tmp_path / "train.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["train.csv"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["train.csv"]


def test_atomic_writes_keep_the_usual_file_permissions(tmp_path):
    """Prepared client folders are shipped to sites: outputs must not be owner-only (as mkstemp files are)."""
    reference = tmp_path / "plain.csv"
    reference.write_text("x")
    target = tmp_path / "atomic.csv"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    assert os.stat(target).st_mode == os.stat(reference).st_mode
