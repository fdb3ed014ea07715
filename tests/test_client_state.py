"""Exact resume on the client: the state it carries between rounds is saved after each training round and, in a
resumed run, restored before its first task, so that a fresh client continues bit for bit as the one that went on.

Each executor family is checked the same way: client A trains round 0, saves its state as after sending the result
and trains round 1; a fresh client B restores A's state of round 0 and trains the same round 1: both send the same
arrays and metrics."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import PROSTATE_TRAIN, SMALL_SELECTOR
from helpers import PROJECT_ROOT, configure
from monai.transforms import Compose, OneOf, RandFlipd, RandGaussianNoised, RandRotate90d
from test_fedmas_client import dataset_root  # noqa: F401  (fixture)
from test_fedmas_client import make_client as fedmas_client
from test_harmofl_exchange import ToyClassificationExecutor, exchange
from test_prrfl_fl import federation  # noqa: F401  (fixture)
from test_prrfl_fl import make_client as det_client
from torch.utils.data import Dataset

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from medfl.common.client_state import read_client_state, state_folder, write_client_state
from medfl.common.data import SegmentationSliceDataset
from medfl.common.errors import DataError
from medfl.common.params import bundle, to_numpy
from medfl.common.protocol import RESUME_ROUND, RUN_ID
from medfl.common.random_state import capture_random_state, restore_random_state, seed_random_transforms
from medfl.common.runtime import seed_everything
from medfl.federations.prostate2d.client import ProstateSegmentationExecutor
from medfl.fedmas.protocol import AGGREGATION
from medfl.fedsm.executor import FedSMExecutor
from medfl.fedsm.moments import MOMENTS_SENT_PROP, SYNCED_MOMENTS_PROP, adam_moments
from medfl.fedsm.protocol import SITE_LABEL
from medfl.prrfl.pfa import shared_params
from medfl.prrfl.protocol import DEPUTY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN = "0123456789abcdef" * 2
TINY_UNET = {"name": "unet", "args": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}


# ------------------------------------------------------------------------------------------------ the files
def test_each_round_keeps_its_file_and_the_newest_older_one(tmp_path):
    folder = state_folder(tmp_path, RUN, "client_a")
    for round_number in range(3):
        write_client_state(folder, RUN, "client_a", round_number, {"w": torch.full((2,), float(round_number))})
    assert sorted(p.name for p in folder.iterdir()) == ["round_1.pt", "round_2.pt"]
    assert torch.equal(read_client_state(folder, RUN, "client_a", 1)["w"], torch.ones(2))
    write_client_state(folder, RUN, "client_a", 0, {})  # a run resumed from an older state: its later files go
    assert sorted(p.name for p in folder.iterdir()) == ["round_0.pt"]


def test_a_missing_unreadable_or_foreign_file_names_the_site_and_the_file(tmp_path):
    folder = state_folder(tmp_path, RUN, "client_a")
    path = folder / "round_3.pt"
    with pytest.raises(DataError, match=rf"^\[client_a\] {path}: cannot resume exactly: no state of round 3 .*"
                                        r"set state_dir outside it\)$"):
        read_client_state(folder, RUN, "client_a", 3)
    folder.mkdir(parents=True)
    path.write_text("not a torch file")
    with pytest.raises(DataError, match=rf"^\[client_a\] {path}: cannot resume exactly: not a readable torch file"):
        read_client_state(folder, RUN, "client_a", 3)
    write_client_state(folder, RUN, "client_b", 3, {})
    with pytest.raises(DataError, match=r"not the client state of \{'run_id': .*'site': 'client_a'.*'site': 'client_b'"):
        read_client_state(folder, RUN, "client_a", 3)
    with pytest.raises(DataError, match=r"^\[client_a\] the server sent the run id '\.\./x', not 32 hex digits$"):
        state_folder(tmp_path, "../x", "client_a")


def test_every_generator_comes_back(tmp_path):
    transform = Compose([RandFlipd(keys="image", prob=0.5), RandGaussianNoised(keys="image", prob=1.0),
                         OneOf([RandRotate90d(keys="image"), RandFlipd(keys="image", prob=1.0, spatial_axis=1)])])
    pairs = [{"image": np.arange(16, dtype=np.float32).reshape(1, 4, 4), "label": np.zeros((1, 4, 4), np.float32)}]
    datasets = {"training": SegmentationSliceDataset(pairs, transform)}
    seed_random_transforms(datasets, 3)

    def draws():
        return (random.random(), np.random.rand(), torch.rand(2), datasets["training"][0]["image"])

    draws()
    write_client_state(tmp_path, RUN, "a", 0, capture_random_state(datasets, torch.device("cpu")))
    expected = draws()
    restore_random_state(read_client_state(tmp_path, RUN, "a", 0), datasets, torch.device("cpu"))
    for a, b in zip(expected, draws()):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_a_transforms_torch_generator_comes_back():
    """The dermoscopy federation's batched augmentation draws from a torch.Generator of its own."""
    from medfl.federations.dermoscopy.batch_augmentation import batched_train_transforms

    class Images(Dataset):
        transform = batched_train_transforms()

        def __len__(self):
            return 1

    datasets = {"training": Images()}
    seed_random_transforms(datasets, 3)
    augment, images = datasets["training"].transform, torch.rand(4, 3, 8, 8)
    augment(images)
    state = capture_random_state(datasets, torch.device("cpu"))
    expected = augment(images)
    restore_random_state(state, datasets, torch.device("cpu"))
    assert torch.equal(augment(images), expected)


# ------------------------------------------------------------------------------------------------ the families
def train(client, params, round_number, meta, ctx=None):
    """Run the train task; return the sent arrays (copies) and metrics."""
    shareable = FLModelUtils.to_shareable(FLModel(params={k: np.array(v) for k, v in params.items()},
                                                  current_round=round_number, meta={RUN_ID: RUN, **meta}))
    reply = client.execute("train", shareable, ctx or FLContext(), Signal())
    assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK, reply.get_return_code()
    result = FLModelUtils.from_shareable(reply)
    return {k: np.array(v) for k, v in result.params.items()}, result.metrics


def sent(client, ctx=None):
    """What NVFlare does once the result is sent: the client saves its state."""
    client.handle_event(EventType.AFTER_SEND_TASK_RESULT, ctx or FLContext())


def assert_resumes_exactly(make, payload, tmp_path, meta=None, after_send=lambda client: FLContext(),
                           round_1=FLContext):
    """Client A: round 0, state saved (NVFlare's context of that event: ``after_send(A)``), round 1. Client B, fresh:
    restores round 0's state, trains round 1. Same arrays and metrics; returns A's round-1 arrays and what B's round
    1 was given."""
    meta = meta or {}
    a = make()
    a.state_dir = tmp_path
    params, _ = train(a, payload, 0, meta)
    sent(a, after_send(a))
    assert (tmp_path / RUN / a.site / "round_0.pt").is_file()
    expected, expected_metrics = train(a, params, 1, meta, round_1())
    b = make()
    b.state_dir = tmp_path
    got, metrics = train(b, params, 1, {**meta, RESUME_ROUND: 0}, round_1())
    assert sorted(got) == sorted(expected)
    different = [k for k in expected if not np.array_equal(expected[k], got[k])]
    assert not different, f"{len(different)} arrays differ after the resume, e.g. {different[:3]}"
    assert json.dumps(metrics, sort_keys=True) == json.dumps(expected_metrics, sort_keys=True)
    return expected, (params, meta)


def prostate_client(demo_prostate, monkeypatch, cls=ProstateSegmentationExecutor, job="fedavg_prostate", **extra):
    monkeypatch.setenv("DATASET_ROOT", str(demo_prostate))
    config = json.loads((PROJECT_ROOT / f"jobs/{job}/app/config/config_train.json").read_text())
    config.update({"network": TINY_UNET, "num_threads": 1, "device": "cpu", "augment": True, **PROSTATE_TRAIN,
                   **extra})

    def make():
        client = configure(cls(analytic_sender_id=""), config, "client_MSD")
        client.setup(None)
        seed_random_transforms(client.datasets, 0)
        return client
    return make


def test_segmentation_client_resumes_exactly_and_needs_its_state(demo_prostate, monkeypatch, tmp_path):
    make = prostate_client(demo_prostate, monkeypatch)
    payload = bundle({"global": to_numpy(make().models["global"].state_dict())})
    expected, (params, meta) = assert_resumes_exactly(make, payload, tmp_path)
    # without the restored state (Adam's moments, the shuffling, the augmentation) the round differs
    fresh = make()
    fresh.state_dir = tmp_path
    got, _ = train(fresh, params, 1, meta)
    assert not all(np.array_equal(expected[k], got[k]) for k in expected)
    # a resumed client whose state is not there fails every task, naming itself and the file
    lost = make()
    lost.state_dir = tmp_path / "elsewhere"
    errors = []
    lost.log_error = lambda ctx, message: errors.append(message)
    shareable = FLModelUtils.to_shareable(FLModel(params=params, current_round=1, meta={RUN_ID: RUN, RESUME_ROUND: 0}))
    reply = lost.execute("train", shareable, FLContext(), Signal())
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    path = tmp_path / "elsewhere" / RUN / "client_MSD" / "round_0.pt"
    assert errors[0].startswith(f"[client_MSD] round 1: [client_MSD] {path}: cannot resume exactly: no state of "
                                "round 0"), errors


def fedsm_payload(client: FedSMExecutor) -> dict:
    return bundle({"global": to_numpy(client.models["global"].state_dict()),
                   "personal": to_numpy(client.models["personal"].state_dict()),
                   "selector": to_numpy(client.selector.state_dict())})


def test_fedsm_client_resumes_exactly_with_its_selector_moments_synced(demo_prostate, monkeypatch, tmp_path):
    make = prostate_client(demo_prostate, monkeypatch, FedSMExecutor, "fedsm_prostate",
                           selector_network=SMALL_SELECTOR)
    synced = {}

    def after_send(client):  # the moment filter sent them: the client releases them, the server averages them
        synced.update({k: v * 0.5 for k, v in adam_moments(client.selector, client.selector_optimizer).items()})
        ctx = FLContext()
        ctx.set_prop(MOMENTS_SENT_PROP, True, private=True, sticky=False)
        return ctx

    def round_1():  # the averaged moments come back with the next task
        ctx = FLContext()
        ctx.set_prop(SYNCED_MOMENTS_PROP, {k: v.copy() for k, v in synced.items()}, private=True, sticky=False)
        return ctx

    assert_resumes_exactly(make, fedsm_payload(make()), tmp_path, {SITE_LABEL: 1}, after_send, round_1)
    saved = torch.load(tmp_path / RUN / "client_MSD" / "round_0.pt", weights_only=True)["state"]
    moments = list(saved["selector_optimizer"]["state"].values())
    assert moments and all(s["exp_avg"].numel() == 0 and s["step"] == 1 for s in moments), \
        "sent moments are not stored (the server's state holds their average); the step is"


def test_fedsm_client_without_moment_sync_keeps_its_moments(demo_prostate, monkeypatch, tmp_path):
    make = prostate_client(demo_prostate, monkeypatch, FedSMExecutor, "fedsm_prostate",
                           selector_network=SMALL_SELECTOR)
    assert_resumes_exactly(make, fedsm_payload(make()), tmp_path, {SITE_LABEL: 0})
    saved = torch.load(tmp_path / RUN / "client_MSD" / "round_0.pt", weights_only=True)["state"]
    assert all(s["exp_avg"].numel() > 0 for s in saved["selector_optimizer"]["state"].values())


def test_harmofl_classification_client_resumes_exactly(tmp_path):
    config = {"network": {"name": "test_harmofl_tiny_cnn"}, "batch_size": 4, "device": "cpu",
              "optimizer": {"name": "sgd", "lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-4}}

    def make():  # as a client process starts: seeded, then the amplitude exchange (its mean depends on the order)
        seed_everything(0)
        client = configure(ToyClassificationExecutor(analytic_sender_id=""), config, "site-1")
        client.setup(FLContext())
        exchange({"site-1": client})
        return client

    payload = bundle({"global": to_numpy(make().model.state_dict())})
    assert_resumes_exactly(make, payload, tmp_path)


def test_det_client_resumes_exactly_with_its_personalised_model(federation, tmp_path):  # noqa: F811
    def make():
        return det_client(federation, tmp_path / "app")

    network = make().deputy
    assert_resumes_exactly(make, bundle({DEPUTY: shared_params(network)}), tmp_path)


def test_fedmas_client_resumes_exactly_with_the_prior_quirk(dataset_root, tmp_path):  # noqa: F811
    from medfl.fedmas.executor import FedMASExecutor

    def make():
        client = fedmas_client(FedMASExecutor, dataset_root, prior_bn_quirk=True)
        client.log_metrics = lambda *args, **kwargs: None
        return client

    payload = bundle({"global": to_numpy(make().model.state_dict())})
    assert_resumes_exactly(make, payload, tmp_path, {AGGREGATION: "mas"})
