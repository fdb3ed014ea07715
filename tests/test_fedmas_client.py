"""FedMAS and baseline clients driven through RoundExecutor.execute, without the simulator (seconds)."""


import pytest
import torch
from helpers import configure

from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from medfl.common.errors import DataError
from medfl.common.params import bundle, to_numpy
from medfl.common.protocol import NUM_TRAIN_SAMPLES
from medfl.common.resnet import resnet_trunk
from medfl.common.settings import ConfigError
from medfl.federations.isic2019 import preparation
from medfl.federations.isic2019.client import SkinLesionExecutor
from medfl.federations.isic2019.evaluation import TESTING, VALIDATION
from medfl.federations.isic2019.networks import ResNetClassifier
from medfl.federations.isic2019.protocol import CLASS_COUNTS, SAMPLES_PER_EPOCH
from medfl.fedmas.executor import FedMASExecutor, FedMASOptions
from medfl.fedmas.networks import FreeHeadResNet
from medfl.fedmas.prior import checkpoint_sha256
from medfl.fedmas.protocol import AGGREGATION, PRIOR_SHA256, ROBUST_FACTOR

SITE = "center_3"
IMAGE_SIZE = 16
BATCH_SIZE = 16
PRIOR_DIM = 512  # a ResNet-18 prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset_root(shared_data, tmp_path_factory):
    """The HAM10000 demo federation at 16 px and a (random) ResNet-18 prior in MoCo-v2 format."""
    root = tmp_path_factory.mktemp("fedmas_client")
    preparation.main(["demo", "--ham-dir", str(shared_data / "ham10000_mini"), "--out", str(root / "fed_isic2019"),
                 "--image-size", str(IMAGE_SIZE)])
    torch.manual_seed(0)
    state = {f"module.encoder_q.{k}": v for k, v in resnet_trunk(18).state_dict().items()}
    (root / "pretrained").mkdir()
    torch.save({"state_dict": state}, root / "pretrained" / "moco_r18.pth.tar")
    return root


def make_client(cls, dataset_root, **overrides):
    config = {
        "data_root": str(dataset_root / "fed_isic2019"),
        "network": {"name": "free_head_resnet", "args": {"n_classes": 8, "prior_dim": PRIOR_DIM, "depth": 18}},
        "optimizer": {"name": "adam", "lr": 3e-4},
        "loss": "bsm", "grad_clip_norm": 5.0, "local_epochs": 1,
        "batch_size": BATCH_SIZE, "image_size": IMAGE_SIZE,
    }
    if issubclass(cls.Settings, FedMASOptions):
        config.update({"prior_checkpoint": str(dataset_root / "pretrained" / "moco_r18.pth.tar"), "free_u": 3.0})
    client = configure(cls(), {**config, **overrides}, SITE)
    client.setup(None)
    return client


def run_task(client, task, aggregation="mas", model=None):
    model = model or client.build_model()
    task_data = FLModel(params=bundle({"global": to_numpy(model.state_dict())}), current_round=0,
                        meta={AGGREGATION: aggregation})
    reply = client.execute(task, FLModelUtils.to_shareable(task_data), FLContext(), Signal())
    assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK, reply.get_return_code()
    return FLModelUtils.from_shareable(reply)


def test_fedmas_round_reports_robust_factor_counts_and_prior_hash(dataset_root):
    client = make_client(FedMASExecutor, dataset_root)
    sent = FreeHeadResNet(prior_dim=PRIOR_DIM)
    result = run_task(client, "train", "mas", sent)
    meta = result.meta
    counts = client.datasets["training"].class_counts()
    assert meta[SAMPLES_PER_EPOCH] == sum(counts) // BATCH_SIZE * BATCH_SIZE  # drop_last-rounded n_k
    assert meta[NUM_TRAIN_SAMPLES] == sum(counts)
    assert meta[PRIOR_SHA256] == checkpoint_sha256(dataset_root / "pretrained" / "moco_r18.pth.tar")
    assert 0 < meta[ROBUST_FACTOR] <= 1
    for split, dataset in ((VALIDATION, client.datasets["validation"]), (TESTING, client.datasets["testing"])):
        assert meta[CLASS_COUNTS][split]["total"] == dataset.class_counts()
    # D_tr is 0 for the classes this client lacks
    d_tr = client.d_tr.compute()
    assert torch.all((d_tr > 0) <= (torch.tensor(counts) > 0))
    assert not torch.equal(client.model.fc.weight.cpu(), sent.fc.weight)
    assert result.params.keys() == bundle({"global": to_numpy(sent.state_dict())}).keys()


def test_mas_inv_and_avg(dataset_root):
    client = make_client(FedMASExecutor, dataset_root)
    assert ROBUST_FACTOR not in run_task(client, "train", "avg").meta  # 'avg' skips D_pre and r_k
    assert ROBUST_FACTOR in run_task(client, "train", "MAS_INV").meta


def test_validate_task_reports_counts_but_no_factor(dataset_root):
    client = make_client(FedMASExecutor, dataset_root)
    meta = run_task(client, "validate").meta
    assert CLASS_COUNTS in meta and ROBUST_FACTOR not in meta


def test_prior_stays_frozen_unless_the_round0_quirk_is_on(dataset_root):
    frozen = make_client(FedMASExecutor, dataset_root)
    before = frozen.prior.encoder.bn1.running_mean.clone()
    run_task(frozen, "train")
    assert torch.equal(frozen.prior.encoder.bn1.running_mean, before)
    quirky = make_client(FedMASExecutor, dataset_root, prior_bn_quirk=True)
    run_task(quirky, "train")
    updated = quirky.prior.encoder.bn1.running_mean.clone()
    assert not torch.equal(updated, before)
    run_task(quirky, "train")  # only the first D_pre pass updates the statistics
    assert torch.equal(quirky.prior.encoder.bn1.running_mean, updated)
    assert not quirky.prior.training


def test_adam_state_persists_across_rounds(dataset_root):
    client = make_client(SkinLesionExecutor, dataset_root, grad_clip_norm=0.0,
                         network={"name": "resnet_classifier", "args": {"n_classes": 8, "depth": 18}})
    run_task(client, "train", "avg")
    steps = {float(s["step"]) for s in client.optimizer.state.values()}
    run_task(client, "train", "avg")
    assert {float(s["step"]) for s in client.optimizer.state.values()} == {2 * s for s in steps}


def test_configuration_errors_are_clear(dataset_root):
    with pytest.raises(DataError, match=r"\[center_3\] .*: the prior gives 512-d features but network.args.prior_dim "
                                        r"is 2048: set prior_dim to 512"):
        make_client(FedMASExecutor, dataset_root,
                    network={"name": "free_head_resnet", "args": {"n_classes": 8, "prior_dim": 2048}})
    with pytest.raises(DataError, match=r"\[center_3\] .*absent\.pth\.tar: MoCo-v2 prior checkpoint not found"):
        make_client(FedMASExecutor, dataset_root, prior_checkpoint=str(dataset_root / "absent.pth.tar"))
    with pytest.raises(ValueError, match="FedMAS needs a network with the projector head"):
        make_client(FedMASExecutor, dataset_root, network={"name": "resnet_classifier", "args": {}})
    with pytest.raises(DataError, match=r"\[center_3\] .*center_3: no data folder for this client"):
        make_client(SkinLesionExecutor, dataset_root, data_root=str(dataset_root))
    with pytest.raises(ConfigError, match=r"\[center_3\] config_train.json: 'loss': Input should be 'ce' or 'bsm'"):
        make_client(SkinLesionExecutor, dataset_root, loss="focal",
                    network={"name": "resnet_classifier", "args": {}})
    with pytest.raises(ConfigError, match="'loss': Input should be 'bsm'"):
        make_client(FedMASExecutor, dataset_root, loss="ce")
    assert isinstance(make_client(SkinLesionExecutor, dataset_root, loss="ce",
                                  network={"name": "resnet_classifier", "args": {}}).model, ResNetClassifier)
