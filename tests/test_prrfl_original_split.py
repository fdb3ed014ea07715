"""The PRR-FL preparation's --split-csv-dir: an original-style CSV split (PRR-FL's csv_folder) reproduced exactly.

The original CSVs (CityU-AIM-Group/PRR-FL, csv_folder/client<X>/<split>_client<X>.csv) have the columns image_id,
label (nv=0, bkl=1, mel=2), label_binary, lesion_id, dx, dx_type, age, sex, localization, dataset; client D's test
file (ISIC 2017 images) has image_id, label, label_binary, melanoma, seborrheic_keratosis. The synthetic set here
has the same columns, an image-level split of two HAM10000 sources of the sample (so lesions are shared between
train and test, as in the original) and a third client of images outside HAM10000, like the original's client D.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfl.common.errors import DataError
from medfl.federations.dermoscopy import preparation as prepare
from medfl.federations.dermoscopy.data import SkinLesionDataset
from medfl.federations.dermoscopy.ham10000 import read_ham10000_metadata

HAM_COLUMNS = ["image_id", "label", "label_binary", "lesion_id", "dx", "dx_type", "age", "sex", "localization",
               "dataset"]
ISIC2017_TEST_COLUMNS = ["image_id", "label", "label_binary", "melanoma", "seborrheic_keratosis"]
SPLIT_OF_ROW = ("train", "train", "valid", "test")  # image-level: row i goes to SPLIT_OF_ROW[i % 4]
OUTSIDE_IDS = [f"ISIC_00000{i:02d}" for i in range(8)]
IMAGE_SIZE = 16


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def ham_root(shared_data) -> Path:
    return shared_data / "ham10000_mini"


@pytest.fixture(scope="module")
def original(ham_root, tmp_path_factory):
    """``(csv_folder, extra image folder, {client: {split: [image ids]}})`` of a synthetic original-style split."""
    root = tmp_path_factory.mktemp("prrfl_original")
    metadata = read_rows(ham_root / "HAM10000_metadata.csv")
    listed: dict[str, dict[str, list[str]]] = {}
    for client, source in (("clientA", "vidir_modern"), ("clientB", "rosendahl")):
        kept = [row for row in metadata if row["dataset"] == source and row["dx"] in prepare.CLASS_INDEX]
        rows = [{**row, "label": prepare.CLASS_INDEX[row["dx"]], "label_binary": int(row["dx"] == "mel")}
                for row in kept]
        listed[client] = {split: [row["image_id"] for i, row in enumerate(rows) if SPLIT_OF_ROW[i % 4] == split]
                          for split in prepare.SPLITS}
        for split in prepare.SPLITS:
            write_csv(root / "csv_folder" / client / f"{split}_{client}.csv", HAM_COLUMNS,
                      [row for i, row in enumerate(rows) if SPLIT_OF_ROW[i % 4] == split])
    extra = root / "isic2017"
    extra.mkdir()
    for index, image_id in enumerate(OUTSIDE_IDS):
        Image.fromarray(np.full((20, 30, 3), 30 * index, np.uint8)).save(extra / f"{image_id}.jpg")
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(extra / f"{image_id}_superpixels.png")  # ignored
    outside = {"train": OUTSIDE_IDS[:4], "valid": OUTSIDE_IDS[4:6], "test": OUTSIDE_IDS[6:]}
    listed["clientC"] = outside
    for split, ids in outside.items():
        columns = ISIC2017_TEST_COLUMNS if split == "test" else HAM_COLUMNS
        write_csv(root / "csv_folder" / "clientC" / f"{split}_clientC.csv", columns,
                  [{"image_id": i, "label": n % 3, "label_binary": 0, "lesion_id": 0, "dx": 0, "melanoma": 0,
                    "seborrheic_keratosis": 0} for n, i in enumerate(ids)])
    return root / "csv_folder", extra, listed


@pytest.fixture(scope="module")
def reproduced(ham_root, original, tmp_path_factory):
    csv_folder, extra, _ = original
    out = tmp_path_factory.mktemp("prrfl_reproduced")
    messages = []
    summary = prepare.prepare_federation(ham_root, out, image_size=IMAGE_SIZE, log=messages.append,
                                         split_csv_dir=csv_folder, extra_image_dirs=[extra])
    return out, summary, messages


def test_every_client_split_is_the_original_row_for_row(original, reproduced, ham_root):
    csv_folder, _, listed = original
    out, summary, _ = reproduced
    assert json.loads((out / "clients.json").read_text()) == {
        "clientA": "vidir_modern", "clientB": "rosendahl", "clientC": prepare.OUTSIDE_HAM10000}
    lesions = {record.image_id: record.lesion_id for record in read_ham10000_metadata(ham_root)}
    for client, splits in listed.items():
        for split, ids in splits.items():
            source = read_rows(csv_folder / client / f"{split}_{client}.csv")
            rows = read_rows(out / client / f"{split}_{client}.csv")
            assert [r["image_id"] for r in rows] == ids and [r["label"] for r in rows] == [r["label"] for r in source]
            assert [r["lesion_id"] for r in rows] == [lesions.get(i, "") for i in ids]
            assert [r["image"] for r in rows] == [f"{client}/img_resize{IMAGE_SIZE}/{i}.png" for i in ids]
        assert summary[client] == {split: len(ids) for split, ids in splits.items()}
    dataset = SkinLesionDataset(out, "clientC", "test", image_size=IMAGE_SIZE)
    assert len(dataset) == 2 and dataset[0]["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_the_shared_lesions_are_reported(original, reproduced, ham_root):
    _, _, listed = original
    _, _, messages = reproduced
    lesions = {record.image_id: record.lesion_id for record in read_ham10000_metadata(ham_root)}
    train = {lesions[i] for i in listed["clientA"]["train"]}
    test = [lesions[i] for i in listed["clientA"]["test"]]
    shared = {lesion for lesion in test if lesion in train}
    assert shared, "the synthetic image-level split shares lesions, as the original's does"
    assert (f"clientA: {len(shared)} of {len(set(test))} test lesions also in its train split "
            f"({sum(lesion in train for lesion in test)} of {len(test)} test images with a HAM10000 lesion id)"
            in messages)
    assert "clientC: 0 of 0 test lesions also in its train split (0 of 0 test images with a HAM10000 lesion id)" \
        in messages


def _copy_csv_folder(csv_folder: Path, root: Path) -> Path:
    for path in csv_folder.rglob("*.csv"):
        target = root / path.relative_to(csv_folder.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    return root / csv_folder.name


def _edit(path: Path, change) -> None:
    rows = read_rows(path)
    columns = list(rows[0])
    change(rows, columns)
    write_csv(path, columns, rows)


@pytest.mark.parametrize("problem, change, message", [
    ("an image in neither HAM10000 nor the extra folder", lambda rows, columns: rows[1].update(image_id="ISIC_0099999"),
     r"^error: \[clientB\] .*clientB/valid_clientB\.csv: image ISIC_0099999 listed here is in none of "
     r".*/images/, .*/isic2017/$"),
    ("a label that disagrees with HAM10000's dx", lambda rows, columns: rows[0].update(label=str(
        (int(rows[0]["label"]) + 1) % 3)), r"\[clientB\] .*valid_clientB\.csv: line 2: image ISIC_\d+ has label \d "
     r"\(\w+\), but HAM10000_metadata\.csv gives dx \w+$"),
    ("a label outside the 3 classes", lambda rows, columns: rows[2].update(label="3"),
     r"valid_clientB\.csv: line 4: expected an image_id and a label in \[0, 1, 2\] \(0=nv, 1=bkl, 2=mel\), got "),
    ("no label column", lambda rows, columns: columns.remove("label"),
     r"valid_clientB\.csv: missing column\(s\) \['label'\]"),
])
def test_bad_original_csvs_are_one_line_errors(problem, change, message, original, ham_root, tmp_path, capsys):
    csv_folder, extra, _ = original
    copy = _copy_csv_folder(csv_folder, tmp_path)
    _edit(copy / "clientB" / "valid_clientB.csv", change)
    argv = ["--ham-root", str(ham_root), "--out", str(tmp_path / "out"), "--split-csv-dir", str(copy),
            "--extra-image-dir", str(extra)]
    assert prepare.main(argv) == 1, problem
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert re.search(message, error.rstrip("\n")), error
    assert not (tmp_path / "out").exists()


def test_an_image_listed_twice_and_gaps_in_the_clients_are_errors(original, ham_root, tmp_path):
    csv_folder, extra, listed = original
    copy = _copy_csv_folder(csv_folder, tmp_path)
    twice = listed["clientA"]["train"][0]
    _edit(copy / "clientA" / "test_clientA.csv", lambda rows, columns: rows[0].update(image_id=twice))
    with pytest.raises(DataError, match=rf"test_clientA\.csv: line 2: image {twice} is listed in train_clientA\.csv"):
        prepare.prepare_federation(ham_root, tmp_path / "out", split_csv_dir=copy, extra_image_dirs=[extra])
    (copy / "clientB").rename(copy / "clientD")
    with pytest.raises(DataError, match=r"expected client folders clientA, clientB, .* found \['clientA', 'clientC', "
                                        r"'clientD'\]"):
        prepare.prepare_federation(ham_root, tmp_path / "out", split_csv_dir=copy)


def test_split_options_do_not_mix_with_the_original_split(original, ham_root, tmp_path, capsys):
    csv_folder, _, _ = original
    with pytest.raises(SystemExit):
        prepare.main(["--ham-root", str(ham_root), "--out", str(tmp_path), "--split-csv-dir", str(csv_folder),
                      "--seed", "3"])
    assert "--sources, --fractions and --seed do not apply with --split-csv-dir" in capsys.readouterr().err
