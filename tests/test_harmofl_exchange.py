"""HarmoFL clients and the amplitude exchange, driven through the executors' NVFlare task interface (no simulator)."""

import json

import numpy as np
import pytest
import torch
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN
from helpers import PROJECT_ROOT, configure
from test_deploy_poc import TINY_UNET as SLICE_UNET
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from medfl.common.errors import DataError
from medfl.common.networks import register_network
from medfl.common.params import bundle, to_numpy
from medfl.common.protocol import NUM_TRAIN_SAMPLES
from medfl.common.train import evaluate_dice
from medfl.federations.prostate2d.demo import make_demo_federation
from medfl.federations.prostate_saml.preparation import client_name, prepare
from medfl.harmofl.amp_norm import amplitude_spectrum
from medfl.harmofl.amplitude_exchange import (
    AMPLITUDE_KEY,
    AMPLITUDE_TASK,
    DIGEST_KEY,
    MIN_TRAIN_SAMPLES,
    REFERENCE_TASK,
    amplitude_digest,
    average_amplitudes,
)
from medfl.harmofl.executor import HarmoFLClassificationExecutor, HarmoFLProstateExecutor, HarmoFLSliceExecutor
from medfl.harmofl.weight_perturbation import WeightPerturbationOptimizer

SITES = ("HK", "UCL")
SIZE = 16
TINY_UNET = {"name": "harmofl_unet", "args": {"features": [4, 4, 8, 8, 8, 4]}}


@pytest.fixture(scope="module")
def prostate_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("harmofl_exchange")
    make_demo_federation(root / "raw", cases_per_site=3, seed=0, sites=SITES)
    prepare(root / "raw", root, sites=SITES, size=SIZE)
    return root


def prostate_config(root, **overrides):
    config = json.loads((PROJECT_ROOT / "jobs/harmofl_prostate/app/config/config_train.json").read_text())
    config.update({"data_root": str(root / "dataset_harmofl_prostate"),
                   "datalist": str(root / "datalist_harmofl_prostate"),
                   "network": TINY_UNET, "device": "cpu", **overrides})
    return config


def start(executor, site, config):
    configure(executor, config, site)
    executor.setup(FLContext())
    return executor


def run_task(executor, task, model):
    reply = executor.execute(task, FLModelUtils.to_shareable(model), FLContext(), Signal())
    assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK, f"{task} failed: {reply.get_return_code()}"
    return FLModelUtils.from_shareable(reply)


def exchange(executors):
    """The server's side of the exchange, as HarmoFLController runs it; returns the reference and the digests."""
    replies = {name: run_task(ex, AMPLITUDE_TASK, FLModel(params={})) for name, ex in executors.items()}
    reference = average_amplitudes({name: r.params for name, r in replies.items()})
    smallest = min(r.meta[NUM_TRAIN_SAMPLES] for r in replies.values())
    broadcast = FLModel(params={AMPLITUDE_KEY: reference}, meta={MIN_TRAIN_SAMPLES: smallest})
    acks = {name: run_task(ex, REFERENCE_TASK, broadcast) for name, ex in executors.items()}
    return replies, reference, acks


def test_only_the_mean_amplitude_of_the_training_images_travels(prostate_root):
    # one batch holding every (unaugmented) training image: the amplitude must be their mean |FFT|
    config = prostate_config(prostate_root, augment=False, batch_size=512)
    executor = start(HarmoFLProstateExecutor(), "client_HK", config)
    reply = run_task(executor, AMPLITUDE_TASK, FLModel(params={}))
    assert set(reply.params) == {AMPLITUDE_KEY} and reply.metrics is None
    assert set(reply.meta) <= {NUM_TRAIN_SAMPLES, "client_name", "props"}
    images = torch.stack([executor.datasets["training"][i]["image"] for i in range(len(executor.datasets["training"]))])
    assert reply.params[AMPLITUDE_KEY].shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(reply.params[AMPLITUDE_KEY], amplitude_spectrum(images).mean(0).numpy(), rtol=1e-5)
    assert reply.meta[NUM_TRAIN_SAMPLES] == len(images)


def test_after_the_exchange_every_client_holds_the_same_frozen_reference(prostate_root):
    config = prostate_config(prostate_root)
    executors = {client_name(site): start(HarmoFLProstateExecutor(), client_name(site), config) for site in SITES}
    sizes = {name: ex.num_samples("training") for name, ex in executors.items()}
    replies, reference, acks = exchange(executors)
    expected = np.mean([r.params[AMPLITUDE_KEY] for r in replies.values()], axis=0)  # equal weights
    np.testing.assert_allclose(reference, expected, rtol=1e-6)
    for name, executor in executors.items():
        assert acks[name].params == {} and acks[name].meta[DIGEST_KEY] == amplitude_digest(reference)
        assert torch.equal(executor.normalizer.reference, torch.from_numpy(reference))
        assert executor.num_samples("training") == min(sizes.values()), "truncated to the smallest client"
    # frozen: the same reference again is accepted, a different one is refused
    executor = executors["client_HK"]
    assert executor.freeze_reference({AMPLITUDE_KEY: reference}, {}) == amplitude_digest(reference)
    with pytest.raises(DataError, match="different amplitude reference"):
        executor.freeze_reference({AMPLITUDE_KEY: reference * 2}, {})
    with pytest.raises(DataError, match="exactly"):
        executor.freeze_reference({AMPLITUDE_KEY: reference, "global/w": reference}, {})


def test_training_before_the_exchange_is_refused_and_after_it_inputs_are_normalised(prostate_root):
    config = prostate_config(prostate_root, amplitude_mode="reference_code", truncate_to_smallest_client=False)
    executor = start(HarmoFLProstateExecutor(), "client_UCL", config)
    model = executor.models["global"]
    task = FLModel(params=bundle({"global": to_numpy(model.state_dict())}), current_round=0)
    reply = executor.execute("train", FLModelUtils.to_shareable(task), FLContext(), Signal())
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    _, reference, _ = exchange({"client_UCL": executor})
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].mean(dim=(0, 2, 3))))
    result = run_task(executor, "train", task)
    # reference_code mode replaces DC only: every input channel has the reference's mean intensity
    target = torch.from_numpy(reference[:, 0, 0] / SIZE ** 2)
    assert seen and all(torch.allclose(means, target, rtol=1e-4) for means in seen)
    batches = -(-executor.num_samples("training") // config["batch_size"])
    validation_batches = -(-executor.num_samples("validation") // config["batch_size"])
    assert len(seen) == validation_batches + 2 * batches, "two passes per weight-perturbed step"
    assert set(result.metrics) == {"global", "dice_bg_fg", "dice_fg"}
    assert result.metrics["global"] == result.metrics["dice_bg_fg"]
    optimizer = executor.optimizers["global"]
    assert isinstance(optimizer, WeightPerturbationOptimizer) and optimizer.alpha == 0.05
    assert optimizer.base_optimizer.defaults["weight_decay"] == 1e-4 and optimizer.base_optimizer.state
    steps = [s["step"].item() for s in optimizer.base_optimizer.state.values()]
    run_task(executor, "train", FLModel(params=result.params, current_round=1))
    assert [s["step"].item() for s in optimizer.base_optimizer.state.values()] == [2 * n for n in steps], \
        "the Adam state persists across rounds"


def test_server_average_rejects_anything_but_amplitudes():
    amplitude = np.ones((3, 4, 4), np.float32)
    assert average_amplitudes({"a": {AMPLITUDE_KEY: amplitude}, "b": {AMPLITUDE_KEY: 3 * amplitude}}).tolist() == \
        (2 * amplitude).tolist()
    with pytest.raises(DataError, match=r"\[b\].*exactly"):
        average_amplitudes({"a": {AMPLITUDE_KEY: amplitude}, "b": {AMPLITUDE_KEY: amplitude, "image": amplitude}})
    with pytest.raises(DataError, match="shapes differ"):
        average_amplitudes({"a": {AMPLITUDE_KEY: amplitude}, "b": {AMPLITUDE_KEY: amplitude[:, :2]}})
    with pytest.raises(DataError, match=r"\[a\].*non-negative"):
        average_amplitudes({"a": {AMPLITUDE_KEY: -amplitude}})


# ---------------------------------------------------------------------------------------------- common 2D slices
def test_slice_client_is_fedavgs_prostate_client_with_harmofl_added(demo_prostate):
    """HarmoFLSliceExecutor on the FedSM/FedAvg slices: the exchange over 1-channel slices, FedAvg's Adam wrapped
    by the perturbation, normalised inputs in both passes, and the test split and score harmofl_test_only uses."""
    config = json.loads((PROJECT_ROOT / "jobs/harmofl_prostate_2d/app/config/config_train.json").read_text())
    config.update({"data_root": str(demo_prostate / "dataset_2D"),
                   "datalist": str(demo_prostate / "datalist_2D"), "network": SLICE_UNET,
                   "device": "cpu", "amplitude_mode": "reference_code", **PROSTATE_TRAIN})
    executors = {client: start(HarmoFLSliceExecutor(), client, config) for client in PROSTATE_CLIENTS}
    sizes = {client: ex.num_samples("training") for client, ex in executors.items()}
    _, reference, acks = exchange(executors)
    size = executors["client_MSD"].datasets["training"][0]["image"].shape[-1]
    assert reference.shape == (1, size, size)
    assert {ack.meta[DIGEST_KEY] for ack in acks.values()} == {amplitude_digest(reference)}
    assert {ex.num_samples("training") for ex in executors.values()} == {min(sizes.values())}

    executor = executors["client_MSD"]
    optimizer = executor.optimizers["global"]
    assert isinstance(optimizer, WeightPerturbationOptimizer) and optimizer.alpha == config["perturbation_alpha"]
    assert isinstance(optimizer.base_optimizer, torch.optim.Adam)
    assert optimizer.base_optimizer.defaults["lr"] == config["optimizer"]["lr"]
    model = executor.models["global"]
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].mean(dim=(0, 2, 3))))
    task = FLModel(params=bundle({"global": to_numpy(model.state_dict())}), current_round=0)
    result = run_task(executor, "train", task)
    assert set(result.metrics) == {"global"} and 0 <= result.metrics["global"] <= 1
    # reference_code mode replaces DC only: every input has the reference's mean intensity
    target = torch.from_numpy(reference[:, 0, 0] / size ** 2)
    assert seen and all(torch.allclose(means, target, rtol=1e-4) for means in seen)
    batches = -(-executor.num_samples("training") // config["batch_size"])
    validation_batches = -(-executor.num_samples("validation") // config["batch_size"])
    assert len(seen) == validation_batches + 2 * batches, "two passes per weight-perturbed step"

    testing = DataLoader(executor.build_split("testing"), batch_size=config["batch_size"])
    assert len(testing.dataset) > 0 and testing.dataset.transform is None, "test slices are not augmented"
    assert executor.score(model, testing) == {"dice_fg": evaluate_dice(model, testing, executor.device)}


# ---------------------------------------------------------------------------------------------- classification
@register_network("test_harmofl_tiny_cnn")
def tiny_cnn(in_channels: int = 3, num_classes: int = 2) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, num_classes))


class RandomPatches(Dataset):
    def __init__(self, n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 8, 8, generator=generator)
        self.labels = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}


class ToyClassificationExecutor(HarmoFLClassificationExecutor):
    def build_split(self, split):
        return RandomPatches(12, seed=0) if split == "training" else RandomPatches(5, seed=1)


def test_classification_client_reuses_the_amplitude_and_perturbation_machinery():
    config = {"network": {"name": "test_harmofl_tiny_cnn"}, "batch_size": 4, "device": "cpu",
              "optimizer": {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}}
    executor = start(ToyClassificationExecutor(), "site-1", config)
    assert isinstance(executor.optimizer, WeightPerturbationOptimizer)
    assert isinstance(executor.optimizer.base_optimizer, torch.optim.SGD)
    _, reference, acks = exchange({"site-1": executor})
    assert reference.shape == (3, 8, 8) and acks["site-1"].meta[DIGEST_KEY] == amplitude_digest(reference)
    calls = []
    executor.model.register_forward_pre_hook(lambda _m, args: calls.append(1))
    task = FLModel(params=bundle({"global": to_numpy(executor.model.state_dict())}), current_round=0)
    result = run_task(executor, "train", task)
    assert set(result.metrics) == {"global"} and 0 <= result.metrics["global"] <= 1
    assert len(calls) == 2 + 2 * 3, "validation (2 batches) and two passes per training batch (3)"
    assert all("momentum_buffer" in s for s in executor.optimizer.base_optimizer.state.values())


def test_classification_truncation_keeps_the_last_batch():
    """§1.4, §1.5: the truncated training set is loaded as the released code loads it, the last batch kept."""
    config = {"network": {"name": "test_harmofl_tiny_cnn"}, "batch_size": 4, "device": "cpu",
              "optimizer": {"name": "sgd", "lr": 1e-3}}
    executor = start(ToyClassificationExecutor(), "site-1", config)
    executor.truncate_training(10)
    assert len(executor.datasets["training"]) == 10 and not executor.train_loader.drop_last
    assert [len(batch["label"]) for batch in executor.train_loader] == [4, 4, 2]
