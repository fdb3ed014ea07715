"""Bad-input matrix: every job's client, built as its ``config_fed_client.json`` says, on its demo federation with
one thing broken. Each case must raise one ``DataError`` line naming the site and the file (``[site] path: ...``)
while the client sets up or loads its data, before anything is trained or written.
"""

from __future__ import annotations

import csv
import importlib
import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import PROJECT_ROOT, configure
from PIL import Image
from test_deploy_poc import (
    FEDERATIONS,
    _camelyon17,
    _dermoscopy,
    _harmofl_prostate,
    _isic2019,
    _medmnist,
    _nuclei,
    _prostate,
)
from torch.utils.data import DataLoader, Dataset

from medfl.common.errors import DataError

# family: (builder, jobs, site, the site's datalist, the folder its entries are relative to, segmentation?)
FAMILIES: Dict[str, Tuple[Callable, List[str], str, str, str, bool]] = {
    "prostate": (_prostate, ["fedavg_prostate", "fedsm_prostate", "harmofl_prostate_2d"], "client_MSD",
                 "datalist_2D/client_MSD.json", "dataset_2D", True),
    "harmofl_prostate": (_harmofl_prostate, ["harmofl_prostate"], "client_UCL",
                         "datalist_harmofl_prostate/client_UCL.json", "dataset_harmofl_prostate", True),
    "nuclei": (_nuclei, ["harmofl_nuclei"], "dapi_blue", "datalist_nuclei/dapi_blue.json", "raw/demo_nuclei", True),
    "camelyon17": (_camelyon17, ["harmofl_camelyon17"], "hospital1", "datalist_camelyon17/hospital1.json",
                   "raw/demo_camelyon17", False),
    "isic2019": (_isic2019, ["fedmas_isic2019", "fedavg_isic2019", "fedavg_bsm_isic2019"], "center_1",
                 "fed_isic2019/center_1/train.csv", "fed_isic2019/center_1", False),
    "dermoscopy": (_dermoscopy, ["prrfl_dermoscopy", "fedavg_dermoscopy", "fedmas_dermoscopy"], "clientA",
                   "prrfl_ham10000/clientA/train_clientA.csv", "prrfl_ham10000", False),
    "medmnist": (_medmnist, ["fedavg_medmnist", "fedavg_medmnist_scaleout"], "site-1", "medmnist/splits_breastmnist/site-1.json", "medmnist",
                 False),
}
FAMILY_OF = {job: family for family, spec in FAMILIES.items() for job in spec[1]}
TRAIN_OVERRIDES = {job: train for federation in FEDERATIONS.values() for job, (_, train) in federation.jobs.items()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data):
    """``prepared(family)`` -> a demo DATASET_ROOT of that family, built once per module."""
    built = {}

    def get(family: str) -> Path:
        if family not in built:
            root = tmp_path_factory.mktemp(f"bad_input_{family}")
            FAMILIES[family][0](root, shared_data)
            built[family] = root
        return built[family]

    return get


def make_client(job: str, site: str, app_dir: Path):
    """The job's executor with its config_train.json (plus the small-test overrides), ready for ``setup``."""
    config_dir = PROJECT_ROOT / "jobs" / job / "app" / "config"
    spec = json.loads((config_dir / "config_fed_client.json").read_text())["executors"][0]["executor"]
    module, name = spec["path"].rsplit(".", 1)
    client = getattr(importlib.import_module(module), name)(**spec.get("args", {}))
    client.app_dir = str(app_dir)
    config = {**json.loads((config_dir / "config_train.json").read_text()), **TRAIN_OVERRIDES.get(job, {}),
              "num_threads": 1}
    return configure(client, config, site)


def load_everything(client) -> None:
    """Read every sample of every dataset the client built (datasets may load lazily)."""
    found: List[Dataset] = []
    for value in vars(client).values():
        for item in (value.values() if isinstance(value, dict) else [value]):
            if isinstance(item, DataLoader):
                item = item.dataset
            if isinstance(item, Dataset) and all(item is not d for d in found):
                found.append(item)
    for dataset in found:
        for index in range(len(dataset)):
            dataset[index]


# ---------------------------------------------------------------------- the faults
def _records(datalist: Path) -> Tuple[list, Callable[[list], None]]:
    """The training records of a JSON or CSV datalist and a function writing them back."""
    if datalist.suffix == ".csv":
        with datalist.open(newline="") as f:
            rows = list(csv.DictReader(f))
        fields = list(rows[0])

        def write(new_rows):
            with datalist.open("w", newline="") as f:
                writer = csv.DictWriter(f, fields)
                writer.writeheader()
                writer.writerows(new_rows)
        return rows, write
    data = json.loads(datalist.read_text())
    key = "training" if "training" in data else "train"

    def write(new_rows):
        datalist.write_text(json.dumps({**data, key: new_rows}))
    return data[key], write


def first_files(root: Path, family: str) -> Tuple[Path, Optional[Path]]:
    _, _, _, datalist, base, _ = FAMILIES[family]
    record = _records(root / datalist)[0][0]
    label = record.get("label")
    return root / base / record["image"], (root / base / label if isinstance(label, str) and "." in label else None)


def _rewrite(path: Path, array: np.ndarray) -> None:
    if path.name.endswith((".nii.gz", ".nii")):
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    else:
        Image.fromarray(array).save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def _read(path: Path) -> np.ndarray:
    if path.name.endswith((".nii.gz", ".nii")):
        return np.asanyarray(nib.load(str(path)).dataobj)
    return np.asarray(Image.open(path))


MEDMNIST_NPZ = "medmnist/breastmnist.npz"


def missing_image(root: Path, family: str) -> Path:
    image, _ = first_files(root, family)
    image.unlink()
    return image


def corrupt_image(root: Path, family: str) -> Path:
    image = root / MEDMNIST_NPZ if family == "medmnist" else first_files(root, family)[0]
    image.write_bytes(b"this is not an image")
    return image


def shape_mismatch(root: Path, family: str) -> Tuple[Path, ...]:
    image, label = first_files(root, family)
    mask = _read(label)
    _rewrite(label, np.ascontiguousarray(mask[: mask.shape[0] // 2]))
    return image, label  # either may be named: the message gives both shapes


def wrong_channels(root: Path, family: str) -> Path:
    """Grey images get a second channel; colour PNGs become grey + alpha, colour JPEGs grey."""
    image, _ = first_files(root, family)
    array = _read(image)
    if array.ndim == 2:
        array = np.stack([array] * 2, axis=-1)
    else:
        array = array[..., 0] if image.suffix.lower() in (".jpg", ".jpeg") else array[..., :2]
    _rewrite(image, np.ascontiguousarray(array))
    return image


def labels_out_of_range(root: Path, family: str) -> Path:
    if family == "medmnist":
        npz = root / MEDMNIST_NPZ
        arrays = dict(np.load(npz))
        arrays["train_labels"][0] = 99
        np.savez(npz, **arrays)
        return npz
    image, label = first_files(root, family)
    if label is not None:  # segmentation (NIfTI): any positive value is foreground, a negative one is wrong
        mask = _read(label).astype(np.float32)
        mask[0, 0] = -1
        _rewrite(label, mask)
        return label
    datalist = root / FAMILIES[family][3]
    rows, write = _records(datalist)
    rows[0]["label"] = 99
    write(rows)
    return datalist, image  # the datalist line or the sample it describes


def non_finite_image(root: Path, family: str) -> Path:
    """A NaN pixel in a float image (only NIfTI holds floats; 8-bit PNG, JPEG and MedMNIST's uint8 cannot)."""
    image, _ = first_files(root, family)
    array = _read(image).astype(np.float32)
    array.flat[array.size // 2] = np.nan
    _rewrite(image, array)
    return image


def empty_datalist(root: Path, family: str) -> Path:
    datalist = root / FAMILIES[family][3]
    write = _records(datalist)[1]
    write([])
    return datalist


FAULTS = {f.__name__: f for f in (missing_image, corrupt_image, shape_mismatch, wrong_channels, labels_out_of_range,
                                  non_finite_image, empty_datalist)}
NO_IMAGE_FILES = {"medmnist"}  # images live in one npz: its cases are the npz and the split file
# colour loaders that convert grey / grey+alpha to RGB as the original code does (PIL ``convert("RGB")``)
CONVERTS_TO_RGB = {"isic2019", "dermoscopy", "nuclei"}
PNG_MASKS = {"nuclei"}  # 8-bit PNG masks cannot hold a negative label; instance ids > 1 are valid
FLOAT_IMAGES = {"prostate", "harmofl_prostate"}  # NIfTI; the other families' files decode to 8-bit integers


def cases():
    for job, family in sorted(FAMILY_OF.items()):
        for fault in FAULTS:
            if fault == "shape_mismatch" and not FAMILIES[family][5]:
                continue
            if fault == "labels_out_of_range" and family in PNG_MASKS:
                continue
            if fault == "wrong_channels" and family in CONVERTS_TO_RGB:
                continue
            if fault == "non_finite_image" and family not in FLOAT_IMAGES:
                continue
            if family in NO_IMAGE_FILES and fault not in ("empty_datalist", "labels_out_of_range", "corrupt_image"):
                continue
            yield pytest.param(job, fault, id=f"{job}-{fault}")


@pytest.mark.parametrize("job,fault", list(cases()))
def test_bad_input_gives_one_clear_line(job, fault, prepared, tmp_path, monkeypatch):
    family = FAMILY_OF[job]
    root = tmp_path / "data"
    shutil.copytree(prepared(family), root, symlinks=False)
    broken = FAULTS[fault](root, family)
    monkeypatch.setenv("DATASET_ROOT", str(root))
    site = FAMILIES[family][2]
    client = make_client(job, site, tmp_path / "app")
    with pytest.raises(DataError) as error:
        client.setup(None)
        load_everything(client)
    message = str(error.value)
    assert message.startswith(f"[{site}] ") and "\n" not in message, message
    candidates = broken if isinstance(broken, tuple) else (broken,)
    assert any(str(path) in message for path in candidates), f"{message!r} does not name {candidates}"
    assert not (tmp_path / "app").exists() or not any((tmp_path / "app").iterdir()), "nothing may be written"


@pytest.mark.parametrize("job", sorted(job for job, family in FAMILY_OF.items() if family in CONVERTS_TO_RGB))
def test_grey_images_are_converted_where_the_original_converts(job, prepared, tmp_path, monkeypatch):
    """Not an error by design: these loaders take grey or grey+alpha files as colour images, as the originals."""
    family = FAMILY_OF[job]
    root = tmp_path / "data"
    shutil.copytree(prepared(family), root, symlinks=False)
    wrong_channels(root, family)
    monkeypatch.setenv("DATASET_ROOT", str(root))
    client = make_client(job, FAMILIES[family][2], tmp_path / "app")
    client.setup(None)
    load_everything(client)


def _poison(client) -> int:
    """Fill every parameter of every model the client holds with NaN; return how many models."""
    models = [m for value in vars(client).values()
              for m in (value.values() if isinstance(value, dict) else [value]) if isinstance(m, torch.nn.Module)]
    with torch.no_grad():
        for model in models:
            for parameter in model.parameters():
                parameter.fill_(float("nan"))
    return len(models)


@pytest.mark.parametrize("job", sorted(FAMILY_OF))
def test_nan_loss_stops_training_with_one_line(job, prepared, tmp_path, monkeypatch):
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.signal import Signal

    family = FAMILY_OF[job]
    monkeypatch.setenv("DATASET_ROOT", str(prepared(family)))
    client = make_client(job, FAMILIES[family][2], tmp_path / "app")
    client.setup(None)
    client.task_meta = {"site_label": 0}  # what FedSM's server sends beside the payload; the others ignore it
    client.load_payload(client.export_params(FLContext()), FLContext())  # a round's payload: its own initial models
    assert _poison(client), "no model found"
    with pytest.raises(FloatingPointError) as error:
        client.train_round(Signal(), FLContext())
    assert "\n" not in str(error.value) and "nan" in str(error.value).lower(), str(error.value)
    if family not in NO_IMAGE_FILES:  # the datasets that read a file per sample name the batch's samples
        assert " on the batch of " in str(error.value), str(error.value)
