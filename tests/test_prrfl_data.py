"""HAM10000 federation by acquisition source, lesion-level splits and the per-client dataset."""

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from medfl.common.errors import DataError
from medfl.federations.dermoscopy import preparation as prepare
from medfl.federations.dermoscopy.batch_augmentation import batched_train_transforms
from medfl.federations.dermoscopy.client import DermoscopySettings
from medfl.federations.dermoscopy.data import SkinLesionDataset, build_client_datasets
from medfl.federations.dermoscopy.ham10000 import read_ham10000_metadata, stratified_group_split
from medfl.federations.dermoscopy.transforms import PerImage, train_transforms


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def ham_root(shared_data) -> Path:
    return shared_data / "ham10000_mini"


@pytest.fixture(scope="module")
def federation(ham_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prrfl_ham10000")
    prepare.prepare_federation(ham_root, out, log=lambda message: None)
    return out


def test_four_clients_one_per_source(federation):
    clients = json.loads((federation / "clients.json").read_text())
    assert clients == {"clientA": "vidir_modern", "clientB": "vidir_molemax", "clientC": "rosendahl",
                       "clientD": "vienna_dias"}
    for client in clients:
        for split in ("train", "valid", "test"):
            assert (federation / client / f"{split}_{client}.csv").is_file()
    assert not list(federation.rglob(".tmp.*"))  # atomic writes leave no temporary files behind


def test_class_filter_labels_and_files(federation, ham_root):
    records = {r.image_id: r for r in read_ham10000_metadata(ham_root)}
    clients = json.loads((federation / "clients.json").read_text())
    for client, source in clients.items():
        listed = []
        for split in ("train", "valid", "test"):
            for row in read_rows(federation / client / f"{split}_{client}.csv"):
                record = records[row["image_id"]]
                assert record.source == source
                assert int(row["label"]) == {"nv": 0, "bkl": 1, "mel": 2}[record.dx]
                with Image.open(federation / row["image"]) as image:
                    assert image.size == (128, 128) and image.mode == "RGB"
                listed.append(row["image_id"])
        expected = {i for i, r in records.items() if r.source == source and r.dx in ("nv", "bkl", "mel")}
        assert sorted(listed) == sorted(expected)  # every kept image exactly once, others dropped


def test_every_lesion_in_one_split_only(federation):
    for client in json.loads((federation / "clients.json").read_text()):
        splits_of_lesion = defaultdict(set)
        sizes = {}
        for split in ("train", "valid", "test"):
            rows = read_rows(federation / client / f"{split}_{client}.csv")
            sizes[split] = len(rows)
            for row in rows:
                splits_of_lesion[row["lesion_id"]].add(split)
        assert all(len(splits) == 1 for splits in splits_of_lesion.values())
        assert sizes["train"] > sizes["test"] > 0


def test_split_is_reproducible(ham_root, federation, tmp_path):
    prepare.prepare_federation(ham_root, tmp_path, sources=["rosendahl"], log=lambda message: None)
    # same seed, same source: identical split even though the client letter differs
    assert [r["image_id"] for r in read_rows(tmp_path / "clientA" / "test_clientA.csv")] == [
        r["image_id"] for r in read_rows(federation / "clientC" / "test_clientC.csv")
    ]


def write_metadata(path: Path, rows: list[list[str]], header: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    lines = [header] + [",".join(row) for row in rows]
    (path / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")


def test_missing_image_is_named(ham_root, tmp_path):
    header = "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset"
    rows = [line.split(",") for line in (ham_root / "HAM10000_metadata.csv").read_text().splitlines()[1:6]]
    rows.append(["HAM_9999999", "ISIC_9999999", "nv", "histo", "50.0", "male", "back", rows[0][-1]])
    root = tmp_path / "ham"
    write_metadata(root, rows, header)
    (root / "images").symlink_to(ham_root / "images")
    with pytest.raises(DataError, match="ISIC_9999999"):
        prepare.prepare_federation(root, tmp_path / "out", sources=[rows[0][-1]], log=lambda message: None)
    assert not (tmp_path / "out").exists()  # checked before anything is written
    assert prepare.main(["--ham-root", str(root), "--out", str(tmp_path / "out"), "--sources", rows[0][-1]]) == 1


def test_metadata_errors_name_file_and_problem(tmp_path):
    write_metadata(tmp_path, [["HAM_1", "ISIC_1", "nv"]], "lesion_id,image_id,dx")
    with pytest.raises(DataError, match=r"HAM10000_metadata.csv: missing column\(s\) \['dataset'\]"):
        read_ham10000_metadata(tmp_path)
    with pytest.raises(DataError, match="metadata not found"):
        read_ham10000_metadata(tmp_path / "absent")


def test_unknown_source_is_an_error(ham_root, tmp_path):
    with pytest.raises(DataError, match="msk_isic2017"):
        prepare.prepare_federation(ham_root, tmp_path, sources=["msk_isic2017"], log=lambda message: None)


def test_stratified_group_split_sizes_and_determinism():
    labels = {f"L{i:02d}": i % 2 for i in range(20)} | {"single": 2}
    parts = stratified_group_split(labels, (0.7, 0.1, 0.2), seed=3)
    assert [len(p) for p in parts] == [15, 2, 4]  # 7+1+2 per class of 10, the single lesion goes to train
    assert "single" in parts[0]
    assert sorted(sum(parts, [])) == sorted(labels)
    assert parts == stratified_group_split(labels, (0.7, 0.1, 0.2), seed=3)
    assert parts != stratified_group_split(labels, (0.7, 0.1, 0.2), seed=4)
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_group_split(labels, (0.7, 0.1), seed=0)


def test_dataset_items(federation):
    dataset = SkinLesionDataset(federation, "clientA", "test")
    item = dataset[0]
    image, label = item["image"], item["label"]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0 and image.max() > 0
    assert label in (0, 1, 2)
    for transform in (PerImage(train_transforms(128)), batched_train_transforms()):
        augmented = SkinLesionDataset(federation, "clientA", "train", transform=transform.set_random_state(0))
        for index in range(4):
            image = augmented[index]["image"]
            assert type(image) is torch.Tensor and image.shape == (3, 128, 128)
            assert -1.0 <= image.min() and image.max() <= 1.0


def test_dataset_errors(tmp_path):
    (tmp_path / "clientA").mkdir()
    (tmp_path / "clientA" / "train_clientA.csv").write_text("image,label\nclientA/x.png,5\n")
    with pytest.raises(DataError, match=r"\[clientA\] .*train_clientA.csv: line 2: label 5"):
        SkinLesionDataset(tmp_path, "clientA", "train")
    with pytest.raises(DataError, match=r"\[clientA\] .*valid_clientA.csv: split CSV not found"):
        SkinLesionDataset(tmp_path, "clientA", "valid")
    (tmp_path / "clientA" / "valid_clientA.csv").write_text("image,label\nclientA/x.png,1\n")
    with pytest.raises(DataError, match=r"x.png: image listed in valid_clientA.csv is missing"):
        SkinLesionDataset(tmp_path, "clientA", "valid")[0]


def test_client_datasets_from_config(federation, monkeypatch):
    monkeypatch.setenv("DATASET_ROOT", str(federation.parent))
    def settings(**overrides):
        values = {"network": {"name": "vgg16_slim"}, "data_root": f"DATASET_ROOT/{federation.name}",
                  "image_size": 128, **overrides}
        return DermoscopySettings(**values)

    datasets = build_client_datasets(settings(), "clientB")
    assert set(datasets) == {"training", "validation", "testing"}
    assert datasets["validation"].csv_path == federation / "clientB" / "valid_clientB.csv"
    assert datasets["training"][0]["image"].shape == (3, 128, 128)
    with pytest.raises(DataError, match=r"\[clientB\] .*expected 64x64 \(config_train.json 'image_size'"):
        build_client_datasets(settings(image_size=64), "clientB")["testing"][0]
    with pytest.raises(DataError, match=r"\[clientZ\] .*clientZ: no folder for this client"):
        build_client_datasets(settings(), "clientZ")
