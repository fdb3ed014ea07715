"""Clients stop on non-finite input, loss or update with one line naming the site, the round and the files
(issue 19, item 2)."""

from __future__ import annotations

import math
from typing import Dict, List

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import configure
from PIL import Image
from torch.utils.data import DataLoader

from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from medfl.common.data import SegmentationSliceDataset, load_nifti, load_segmentation_pairs
from medfl.common.errors import DataError
from medfl.common.executor import RoundExecutor
from medfl.common.images import read_image
from medfl.common.params import bundle, load_numpy, to_numpy, unbundle
from medfl.common.train import train_epoch


def nan_loss(output, label):
    return output.sum() * math.nan


def test_a_nan_in_a_nifti_file_is_named(tmp_path):
    image = np.zeros((4, 4), np.float32)
    image[1, 2] = np.nan
    path = tmp_path / "image_003.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(path))
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(tmp_path / "label_003.nii.gz"))
    expected = f"[client_MSD] {path}: 1 of 16 values are NaN or infinite; fix or re-export the file"
    with pytest.raises(DataError) as error:
        load_nifti(path, "client_MSD")
    assert str(error.value) == expected
    with pytest.raises(DataError) as error:
        load_segmentation_pairs([{"image": path.name, "label": "label_003.nii.gz"}], tmp_path, "client_MSD")
    assert str(error.value) == expected


def test_an_infinite_value_in_a_float_tiff_is_named(tmp_path):
    image = np.zeros((4, 4), np.float32)
    image[0, 0] = np.inf
    path = tmp_path / "cell.tif"
    Image.fromarray(image, mode="F").save(path)
    with pytest.raises(DataError, match=rf"^\[dapi\] {path}: 1 of 16 values are NaN or infinite"):
        read_image(path, "dapi")


def slices(n: int) -> SegmentationSliceDataset:
    pairs = [{"image": np.ones((1, 4, 4), np.float32), "label": np.zeros((1, 4, 4), np.float32),
              "id": f"Case{i:02d}/image_{i:03d}.nii.gz"} for i in range(n)]
    return SegmentationSliceDataset(pairs)


def test_a_non_finite_loss_names_the_batch_files():
    model = torch.nn.Conv2d(1, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError) as error:
        train_epoch(model, DataLoader(slices(2), batch_size=2), nan_loss, optimizer, torch.device("cpu"))
    assert str(error.value) == ("training loss is nan on the batch of Case00/image_000.nii.gz, Case01/image_001.nii.gz "
                                "(check the learning rate and the input data)")
    with pytest.raises(FloatingPointError, match=r"batch of Case00/\S+, .*Case15/image_015.nii.gz and 4 more \("):
        train_epoch(model, DataLoader(slices(20), batch_size=20), nan_loss, optimizer, torch.device("cpu"))


class ToyClient(RoundExecutor):
    """A one-layer client: ``loss`` and the update it exports are the faults under test."""

    def __init__(self, loss=torch.nn.functional.mse_loss, update=None):
        super().__init__(analytic_sender_id="")
        self.site, self.loss, self.update = "client_MSD", loss, update
        self.model = torch.nn.Conv2d(1, 1, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.train_loader = DataLoader(slices(2), batch_size=2)
        configure(self, {"network": {"name": "conv"}, "optimizer": {"name": "sgd", "lr": 0.1}, "batch_size": 2})
        self.errors: List[str] = []
        self.log_error = lambda fl_ctx, msg: self.errors.append(msg)
        self.log_info = lambda fl_ctx, msg: None

    def setup(self, fl_ctx):
        pass

    def load_payload(self, params, fl_ctx):
        load_numpy(self.model, unbundle(params)["global"])

    def evaluate(self, split="validation") -> Dict[str, float]:
        return {"global": 0.5}

    def train_round(self, abort_signal, fl_ctx):
        train_epoch(self.model, self.train_loader, self.loss, self.optimizer, self.device)

    def export_params(self, fl_ctx):
        params = bundle({"global": to_numpy(self.model.state_dict())})
        if self.update:
            self.update(params)
        return params

    def num_samples(self, split):
        return 2

    def run_round(self, round_number: int = 3):
        payload = FLModel(params=bundle({"global": to_numpy(torch.nn.Conv2d(1, 1, 1).state_dict())}),
                          current_round=round_number)
        return self.execute("train", FLModelUtils.to_shareable(payload), FLContext(), Signal())


def test_an_honest_round_sends_the_update():
    client = ToyClient()
    reply = client.run_round()
    assert reply.get_return_code() == ReturnCode.OK and not client.errors


def test_a_non_finite_loss_fails_the_task_naming_site_round_and_files():
    client = ToyClient(loss=nan_loss)
    assert client.run_round().get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert client.errors == ["[client_MSD] round 3: training loss is nan on the batch of Case00/image_000.nii.gz, "
                             "Case01/image_001.nii.gz (check the learning rate and the input data)"]


@pytest.mark.parametrize("value, norm", [(np.nan, "nan"), (np.inf, "inf")])
def test_a_non_finite_update_is_never_sent(value, norm):
    client = ToyClient(update=lambda params: params["global/weight"].fill(value))
    assert client.run_round().get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert client.errors == [f"[client_MSD] round 3: the update's norm is {norm} (global/weight holds 1 non-finite "
                             "value(s) (NaN or inf) of 1); not sending it (check the learning rate and the input data)"]
