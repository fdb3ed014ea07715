"""FedMAS on the dermoscopy federation without the simulator: the slim VGG with the projector head, the client
(dermoscopy data, SGD schedule, MAS measurements, prior input) and the MAS server's model selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PROJECT_ROOT, configure

from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from medfl.common.networks import build_network
from medfl.common.params import bundle, to_numpy
from medfl.common.protocol import NUM_VAL_SAMPLES
from medfl.common.resnet import resnet_trunk
from medfl.federations.dermoscopy.networks import VGG16Slim
from medfl.federations.dermoscopy.preparation import prepare_federation
from medfl.federations.isic2019.data import IMAGENET_MEAN, IMAGENET_STD
from medfl.federations.isic2019.protocol import SAMPLES_PER_EPOCH
from medfl.federations.isic2019.server import HISTORY_FILE
from medfl.fedmas.controller import MASController
from medfl.fedmas.dermoscopy import DermoscopyFedMASExecutor, FreeHeadVGG16Slim, unit_range_to_imagenet
from medfl.fedmas.protocol import AGGREGATION, PRIOR_SHA256, ROBUST_FACTOR

SITE = "clientA"
IMAGE_SIZE = 32  # the slim VGG pools five times
PRIOR_DIM = 512  # a ResNet-18 prior
VGG_ARGS = {"blocks": [[4], [4], [4], [4], [4]], "hidden_features": 4}
NETWORK = {"name": "medfl.fedmas.dermoscopy:free_head_vgg16_slim", "args": {**VGG_ARGS, "prior_dim": PRIOR_DIM}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset_root(shared_data, tmp_path_factory) -> Path:
    """clientA of the HAM10000-mini dermoscopy federation at 32x32 and a random ResNet-18 prior in MoCo format."""
    root = tmp_path_factory.mktemp("fedmas_dermoscopy")
    prepare_federation(shared_data / "ham10000_mini", root / "prrfl_ham10000", sources=["vidir_modern"],
                       image_size=IMAGE_SIZE, log=lambda message: None)
    torch.manual_seed(0)
    (root / "pretrained").mkdir()
    state = {f"module.encoder_q.{k}": v for k, v in resnet_trunk(18).state_dict().items()}
    torch.save({"state_dict": state}, root / "pretrained" / "moco_r18.pth.tar")
    return root


def make_client(dataset_root: Path, tmp_path: Path) -> DermoscopyFedMASExecutor:
    """The job's client with its config_train.json, pointed at the test federation and prior."""
    config = json.loads((PROJECT_ROOT / "jobs" / "fedmas_dermoscopy" / "app" / "config" / "config_train.json")
                        .read_text())
    client = DermoscopyFedMASExecutor(analytic_sender_id="")
    client.app_dir = str(tmp_path)
    configure(client, {**config, "data_root": str(dataset_root / "prrfl_ham10000"), "image_size": IMAGE_SIZE,
                       "prior_checkpoint": str(dataset_root / "pretrained" / "moco_r18.pth.tar"),
                       "network": NETWORK, "local_epochs": 1, "num_threads": 1}, SITE)
    client.setup(FLContext())
    return client


def test_free_head_vgg_is_the_comparison_vgg_plus_the_projector_head():
    torch.manual_seed(0)
    model = build_network(NETWORK["name"], **NETWORK["args"]).eval()
    assert isinstance(model, FreeHeadVGG16Slim)
    plain = VGG16Slim(**VGG_ARGS)
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) < set(model.state_dict()) and {k.split(".")[0] for k in extra} == {"p_free",
                                                                                                     "fc_free"}
    x = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    features, z1, p, z2 = model.heads(x)
    assert features.shape == (3, 4) and z1.shape == z2.shape == (3, 3) and p.shape == (3, PRIOR_DIM)
    torch.testing.assert_close(z1, model(x))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k not in extra})
    torch.testing.assert_close(plain.eval()(x), model(x))  # the prediction path is the plain VGG's


def test_prior_sees_imagenet_normalised_images():
    unit = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(unit_range_to_imagenet(unit * 2 - 1), (unit - mean) / std)


def test_client_round_measures_mas_with_the_dermoscopy_data_and_schedule(dataset_root, tmp_path):
    client = make_client(dataset_root, tmp_path)
    counts = client.datasets["training"].class_counts()
    assert client.class_counts == counts and sum(counts) == len(client.datasets["training"])
    seen = []
    prior = client.prior
    client.prior = lambda images: seen.append(images.clone()) or prior(images)
    sent = build_network(NETWORK["name"], **NETWORK["args"])
    task = FLModel(params=bundle({"global": to_numpy(sent.state_dict())}), current_round=5, meta={AGGREGATION: "mas"})
    reply = client.execute("train", FLModelUtils.to_shareable(task), FLContext(), Signal())
    assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK, reply.get_return_code()
    result = FLModelUtils.from_shareable(reply)
    assert 0 < result.meta[ROBUST_FACTOR] <= 1 and result.meta[PRIOR_SHA256]
    assert not client.train_loader.drop_last  # the federation's loader (PRR-FL's): the last batch kept
    assert result.meta[SAMPLES_PER_EPOCH] == sum(counts)  # so n_k is every sample
    assert result.metrics["global"] == result.metrics["global_macro_f1"]  # selected on macro-F1, as FedAvg's
    assert type(client.optimizer) is torch.optim.SGD
    assert client.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)  # the federation's schedule, round 5
    # D_pre and training passes: the prior got every batch in ImageNet normalisation, not the model's [-1, 1]
    assert len(seen) == 2 * len(client.train_loader) and min(float(b.min()) for b in seen) < -1.5


def test_mas_server_selects_on_the_clients_reported_metric(tmp_path):
    controller = MASController(aggregation="mas", num_rounds=2, network=NETWORK)
    controller.fl_ctx = FLContext()
    controller.get_app_dir = lambda: str(tmp_path)
    controller.models = {"global": {"w": np.zeros(2, dtype=np.float32)}}

    def reply(value: float, metric: float, factor: float) -> FLModel:
        return FLModel(params=bundle({"global": {"w": np.full(2, value, dtype=np.float32)}}),
                       metrics={"global": metric},
                       meta={SAMPLES_PER_EPOCH: 16, ROBUST_FACTOR: factor, PRIOR_SHA256: "abc", NUM_VAL_SAMPLES: 4},
                       current_round=0)

    results = {"a": reply(1.0, 0.2, 0.1), "b": reply(3.0, 0.6, 0.3)}
    controller.track_best(results, 0)
    best = torch.load(tmp_path / "best_global_model.pt", weights_only=True)
    assert best["score"] == pytest.approx(0.4) and best["round_number"] == 0  # validation-size weighted mean
    controller.aggregate(results)
    assert controller.models["global"]["w"] == pytest.approx([0.25 * 1.0 + 0.75 * 3.0] * 2)  # r_k / sum r
    assert not (tmp_path / HISTORY_FILE).exists(), "the Fed-ISIC2019 history belongs to FedMASController"
