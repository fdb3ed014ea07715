"""PRR-FL on NVFlare without the simulator: the DET client's task flow, the PFA server's aggregation and selection."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import configure

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from medfl.common.errors import DataError
from medfl.common.losses import BalancedSoftmaxLoss
from medfl.common.networks import build_network
from medfl.common.params import bundle, unbundle
from medfl.common.protocol import NUM_TRAIN_SAMPLES, NUM_VAL_SAMPLES
from medfl.common.settings import ConfigError
from medfl.federations.dermoscopy.client import DermoscopyExecutor, optimizer_for_round, round_learning_rate
from medfl.federations.dermoscopy.preparation import prepare_federation
from medfl.prrfl.controller import PFAController, deputy_name
from medfl.prrfl.executor import DETExecutor, DETSettings
from medfl.prrfl.pfa import batchnorm_keys, pfa_aggregate_state_dicts, pfa_ratio, shared_params
from medfl.prrfl.protocol import BEST_PERSONAL_ROUND, BEST_PERSONAL_SCORE, DEPUTY, TRAINED_METRICS

NETWORK = {"name": "medfl.federations.dermoscopy.networks:vgg16_slim",
           "args": {"blocks": [[4], [4], [4], [4], [4]], "hidden_features": 4}}
IMAGE_SIZE = 32

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def federation(shared_data, tmp_path_factory) -> Path:
    """clientA (vidir_modern) of the HAM10000-mini federation at 32x32."""
    out = tmp_path_factory.mktemp("prrfl_fl")
    prepare_federation(shared_data / "ham10000_mini", out, sources=["vidir_modern"], image_size=IMAGE_SIZE,
                       log=lambda message: None)
    return out


def test_network_named_with_its_module():
    model = build_network(NETWORK["name"], **NETWORK["args"])
    assert "layer1.0.bn.running_mean" in model.state_dict()
    with pytest.raises(ValueError, match="cannot import 'medfl.absent'"):
        build_network("medfl.absent:vgg16_slim")


def test_learning_rate_halves_every_five_rounds():
    assert [round_learning_rate(1e-2, r, 0.5, 5) for r in (0, 4, 5, 9, 10, 49)] == [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3,
                                                                             1e-2 * 0.5 ** 9]
    original = DETSettings(network=NETWORK, data_root="unused")
    optimizer = optimizer_for_round(torch.nn.Linear(2, 2).parameters(), original, 7)  # the original's SGD, round 7
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.SGD and group["momentum"] == 0
    assert group["lr"] == pytest.approx(5e-3) and group["weight_decay"] == 1e-6
    custom = DETSettings(network=NETWORK, data_root="unused", optimizer={"name": "sgd", "lr": 0.1}, lr_decay=0.1,
                         lr_decay_rounds=2)
    optimizer = optimizer_for_round(torch.nn.Linear(2, 2).parameters(), custom, 4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------------- client
def make_client(federation: Path, tmp_path: Path, **config) -> DETExecutor:
    client = DETExecutor(analytic_sender_id="")
    client.app_dir = str(tmp_path)
    configure(client, {"data_root": str(federation), "image_size": IMAGE_SIZE, "network": NETWORK, "batch_size": 16,
                       "local_epochs": 2, **config}, "clientA")
    client.setup(FLContext())
    return client


def task(client: DETExecutor, name: str, deputy, round_number: int, meta=None) -> FLModel:
    shareable = FLModelUtils.to_shareable(FLModel(params=bundle({DEPUTY: deputy}), current_round=round_number,
                                                  total_rounds=2, meta=meta or {}))
    reply = client.execute(name, shareable, FLContext(), Signal())
    return FLModelUtils.from_shareable(reply)


def test_det_client_round_keeps_batchnorm_and_personal_model_local(federation, tmp_path):
    client = make_client(federation, tmp_path)
    initial = shared_params(build_network(NETWORK["name"], **NETWORK["args"]))
    bn_keys = batchnorm_keys(client.deputy)

    result = task(client, "train", initial, 0)
    sent = unbundle(result.params)
    assert set(sent) == {DEPUTY}  # the personalised model never leaves the client
    assert set(sent[DEPUTY]) == set(initial) and not set(sent[DEPUTY]) & bn_keys
    assert result.meta[NUM_TRAIN_SAMPLES] == len(client.datasets["training"])
    assert result.meta[NUM_VAL_SAMPLES] == len(client.datasets["validation"])
    for prefix in ("personal", "deputy"):
        assert {f"{prefix}_{m}" for m in ("accuracy", "macro_f1", "macro_auc")} <= set(result.metrics)
    trained = result.meta[TRAINED_METRICS]  # sent through the common executor's result_meta hook
    assert set(trained) == set(result.metrics)
    last = torch.load(tmp_path / "last_personal_model.pt", weights_only=True)
    assert last["round_number"] == 0 and last["metrics"] == trained
    assert not (tmp_path / "best_personal_model.pt").exists()

    # round 1: a different deputy arrives; BN of the deputy is the client's own, the personal model is untouched
    personal_before = {k: v.clone() for k, v in client.personal.state_dict().items()}
    deputy_bn_before = {k: v.clone() for k, v in client.deputy.state_dict().items() if k in bn_keys}
    received = {k: v + 0.5 for k, v in sent[DEPUTY].items()}
    client.load_payload(bundle({DEPUTY: received}), FLContext())
    for key, value in client.deputy.state_dict().items():
        expected = deputy_bn_before[key] if key in bn_keys else torch.as_tensor(received[key])
        torch.testing.assert_close(value, expected)
    for key, value in client.personal.state_dict().items():
        torch.testing.assert_close(value, personal_before[key])

    # the server's selection of round 0 arrives with the next task: the personal model as it was then is saved
    reply = task(client, "validate", received, 2, {BEST_PERSONAL_ROUND: 0, BEST_PERSONAL_SCORE: 0.5})
    assert reply.params is None or not reply.params
    best = torch.load(tmp_path / "best_personal_model.pt", weights_only=True)
    assert best["round_number"] == 0 and best["score"] == 0.5 and best["metrics"] == trained
    for key, value in best["state_dict"].items():
        torch.testing.assert_close(value, personal_before[key])


def test_without_det_the_personal_model_is_the_deputy_trained_with_cross_entropy(federation, tmp_path, monkeypatch):
    """``transfer: "none"``: only the deputy trains, with CE and its own SGD at the round's rate, one epoch per local
    epoch; no DET stage is decided or trained; the personalised model is then that deputy, BatchNorm included."""
    import medfl.prrfl.executor as executor

    def no_det(*args, **kwargs):
        raise AssertionError("DET must not run without DET")

    trained = []

    def recording_epoch(model, loader, loss_fn, optimizer, device, **kwargs):
        trained.append((model, loss_fn, optimizer))
        return real_epoch(model, loader, loss_fn, optimizer, device, **kwargs)

    real_epoch = executor.train_epoch
    monkeypatch.setattr(executor, "decide_det_stage", no_det)
    monkeypatch.setattr(executor, "det_local_epoch", no_det)
    monkeypatch.setattr(executor, "train_epoch", recording_epoch)
    client = make_client(federation, tmp_path, transfer="none", local_epochs=3)
    initial = shared_params(build_network(NETWORK["name"], **NETWORK["args"]))

    result = task(client, "train", initial, 5)
    assert len(trained) == 3
    for model, loss_fn, optimizer in trained:
        assert model is client.deputy and loss_fn is torch.nn.functional.cross_entropy
        (group,) = optimizer.param_groups
        assert group["lr"] == pytest.approx(5e-3)  # round 5: halved once
        assert [id(p) for p in group["params"]] == [id(p) for p in client.deputy.parameters()]
    deputy = client.deputy.state_dict()
    assert any(not torch.equal(deputy[k], torch.as_tensor(v)) for k, v in initial.items())  # it trained
    for key, value in client.personal.state_dict().items():
        torch.testing.assert_close(value, deputy[key])
    sent = unbundle(result.params)[DEPUTY]
    assert all(np.array_equal(sent[k], deputy[k].numpy()) for k in sent)
    metrics = result.meta[TRAINED_METRICS]
    assert metrics["personal_macro_f1"] == metrics["deputy_macro_f1"]
    last = torch.load(tmp_path / "last_personal_model.pt", weights_only=True)
    for key, value in last["state_dict"].items():
        torch.testing.assert_close(value, deputy[key])
    with pytest.raises(ConfigError, match="transfer"):
        make_client(federation, tmp_path, transfer="kd")


def test_det_client_first_payload_initialises_both_models(federation, tmp_path):
    client = make_client(federation, tmp_path)
    initial = shared_params(build_network(NETWORK["name"], **NETWORK["args"]))
    initial = {k: v + 1.0 for k, v in initial.items()}
    client.load_payload(bundle({DEPUTY: initial}), FLContext())
    for model in (client.personal, client.deputy):
        for key, value in initial.items():
            torch.testing.assert_close(model.state_dict()[key], torch.as_tensor(value))


def test_det_client_keeps_the_last_batch_as_the_original(federation, tmp_path):
    """§2.6: a shuffled loader of batch 16 with PyTorch's default (drop_last false); only a last batch of one
    sample is dropped, which the slim VGG's BatchNorm1d cannot train on (the original would stop there)."""
    client = make_client(federation, tmp_path)
    size = len(client.datasets["training"])
    assert size > 16 and client.train_loader.drop_last is (size % 16 == 1)
    assert make_client(federation, tmp_path, drop_last=True).train_loader.drop_last


def fedavg_client(federation: Path, tmp_path: Path, **config) -> DermoscopyExecutor:
    client = DermoscopyExecutor(analytic_sender_id="")
    client.app_dir = str(tmp_path)
    configure(client, {"data_root": str(federation), "image_size": IMAGE_SIZE, "network": NETWORK, "batch_size": 16,
                       **config}, "clientA")
    client.setup(FLContext())
    return client


def test_fedavg_client_reports_every_metric_and_selects_on_macro_f1(federation, tmp_path):
    client = fedavg_client(federation, tmp_path, val_metric="macro_f1")
    metrics = client.evaluate("testing")
    assert metrics["global"] == metrics["global_macro_f1"]
    assert {"global_accuracy", "global_macro_auc"} <= set(metrics)
    client.current_round = 5
    client.train_round(Signal(), FLContext())
    assert client.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)  # the DET client's schedule


def test_fedavg_client_trains_with_cross_entropy_unless_bsm_fl(federation, tmp_path):
    """``loss: "bsm"`` (BSM-FL) is Balanced Softmax over the client's training class counts; the default is CE."""
    assert fedavg_client(federation, tmp_path).loss_fn is torch.nn.functional.cross_entropy
    client = fedavg_client(federation, tmp_path, loss="bsm")
    counts = client.datasets["training"].class_counts()
    assert isinstance(client.loss_fn, BalancedSoftmaxLoss) and client.class_counts == counts
    assert client.loss_fn.class_counts.tolist() == counts and sum(counts) == len(client.datasets["training"])
    with pytest.raises(ConfigError, match="'loss'"):
        fedavg_client(federation, tmp_path, loss="focal")
    with pytest.raises(ConfigError, match="unknown key 'loss'"):  # PRR-FL's client trains with its DET losses
        make_client(federation, tmp_path, loss="bsm")


def test_det_client_rejects_a_wrong_payload(federation, tmp_path):
    client = make_client(federation, tmp_path)
    with pytest.raises(DataError, match=r"\[clientA\] the server sent no deputy"):
        client.load_payload({"global/fc2.linear.weight": np.zeros((3, 4))}, FLContext())
    with pytest.raises(DataError, match=r"\[clientA\] the deputy parameters do not match the network: missing"):
        client.load_payload(bundle({DEPUTY: {"fc2.linear.weight": np.zeros((3, 4))}}), FLContext())


# ---------------------------------------------------------------------------------------------- server
class Engine:
    def __init__(self, clients):
        self.clients = [SimpleNamespace(name=c) for c in clients]

    def get_clients(self):
        return self.clients


CLIENTS = ("clientA", "clientB", "clientC")


def make_server(clients=CLIENTS, **kwargs) -> PFAController:
    server = PFAController(num_rounds=10, network=NETWORK, seed=0, **kwargs)
    server.engine, server.fl_ctx = Engine(clients), FLContext()
    server.models = server.initial_models()
    return server


def trained_result(params, round_number: int, f1: float, n_train: int = 10) -> FLModel:
    return FLModel(params=bundle({DEPUTY: params}), current_round=round_number, metrics={"personal_macro_f1": f1},
                   meta={NUM_TRAIN_SAMPLES: n_train, NUM_VAL_SAMPLES: 5, TRAINED_METRICS: {"personal_macro_f1": f1}})


def test_round_zero_sends_every_client_the_same_deputy_without_batchnorm():
    server = make_server()
    payloads = [unbundle(server.payload_for(c))[DEPUTY] for c in CLIENTS]
    model = build_network(NETWORK["name"], **NETWORK["args"])
    assert set(payloads[0]) == set(model.state_dict()) - batchnorm_keys(model)
    for payload in payloads[1:]:
        assert all(np.array_equal(payload[k], payloads[0][k]) for k in payload)
    with pytest.raises(ValueError, match="no deputy for client clientZ"):
        server.payload_for("clientZ")


@pytest.mark.parametrize("weighting", ["equal", "samples"])
def test_pfa_gives_each_client_its_own_deputy(weighting):
    server = make_server(weighting=weighting)
    rng = np.random.default_rng(0)
    deputies = {c: {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in server.models[deputy_name(c)].items()}
                for c in CLIENTS}
    sizes = {"clientA": 10, "clientB": 30, "clientC": 60}
    server.aggregate({c: trained_result(d, 3, 0.5, sizes[c]) for c, d in deputies.items()})
    weights = None if weighting == "equal" else [10, 30, 60]
    tensors = [{k: torch.tensor(v) for k, v in deputies[c].items()} for c in sorted(deputies)]
    expected = pfa_aggregate_state_dicts(tensors, pfa_ratio(3, 10), weights_k=weights)
    for client, state in zip(sorted(deputies), expected):
        got = server.models[deputy_name(client)]
        assert all(np.allclose(got[k], state[k].numpy()) for k in state)
    key = "layer1.0.conv.weight"
    assert not np.allclose(server.models[deputy_name("clientA")][key], server.models[deputy_name("clientB")][key])


@pytest.mark.parametrize("weighting, weights", [("equal", [1, 1, 1]), ("samples", [10, 30, 60])])
def test_mean_aggregation_gives_every_client_the_weighted_mean_deputy(weighting, weights):
    """The ablation without PFA: one weighted mean of the deputies for every client, BatchNorm still never sent."""
    server = make_server(weighting=weighting, aggregation="mean")
    rng = np.random.default_rng(1)
    deputies = {c: {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in server.models[deputy_name(c)].items()}
                for c in CLIENTS}
    sizes = dict(zip(CLIENTS, [10, 30, 60]))
    server.aggregate({c: trained_result(d, 3, 0.5, sizes[c]) for c, d in deputies.items()})
    model = build_network(NETWORK["name"], **NETWORK["args"])
    shared = set(model.state_dict()) - batchnorm_keys(model)
    payloads = {c: unbundle(server.payload_for(c))[DEPUTY] for c in CLIENTS}
    for client, payload in payloads.items():
        assert set(payload) == shared, client
        for key, value in payload.items():
            expected = sum(w * deputies[c][key].astype(np.float64) for w, c in zip(weights, CLIENTS)) / sum(weights)
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
            assert value.dtype == deputies[client][key].dtype
    with pytest.raises(ConfigError, match="aggregation"):
        PFAController(aggregation="fedavg", network=NETWORK)


def test_selection_of_personalised_models_in_the_last_fifth():
    server = make_server()  # 10 rounds: rounds 8 and 9 are in the window
    params = server.models[deputy_name("clientA")]
    for round_number, f1s in [(0, (0.9, 0.9, 0.9)), (8, (0.4, 0.6, 0.5)), (9, (0.3, 0.4, 0.5))]:
        server.track_best({c: trained_result(params, round_number, f) for c, f in zip(CLIENTS, f1s)}, round_number)
        if round_number == 0:
            assert server.payload_meta("clientA") == {}  # before the window, however good
        if round_number == 8:
            assert server.payload_meta("clientB") == {BEST_PERSONAL_ROUND: 8, BEST_PERSONAL_SCORE: pytest.approx(0.5)}
    assert server.payload_meta("clientA") == {}  # round 9's mean (0.4) is worse than round 8's
    assert server.extra_state() == {"best_personal_score": pytest.approx(0.5), "new_best_round": None}

    server.track_best({c: trained_result(params, 9, 0.8) for c in CLIENTS}, 9)
    validation = {c: FLModel(metrics={"personal_macro_f1": 0.1}, meta={NUM_VAL_SAMPLES: 5}) for c in CLIENTS}
    server.track_best(validation, 10)  # the final validation keeps the last selection for its own task
    assert server.payload_meta("clientC")[BEST_PERSONAL_ROUND] == 9


def test_selection_window_keeps_the_last_round_and_settings_are_checked():
    assert make_server().first_selection_round() == 8
    assert PFAController(num_rounds=2, network=NETWORK).first_selection_round() == 1
    assert PFAController(num_rounds=1, network=NETWORK).first_selection_round() == 0
    with pytest.raises(ConfigError, match="final_validation"):
        PFAController(final_validation=False, network=NETWORK)
    with pytest.raises(ConfigError, match="pfa_ratio_start"):
        PFAController(pfa_ratio_start=0.9, pfa_ratio_end=0.8, network=NETWORK)
    with pytest.raises(ConfigError, match="weighting"):
        PFAController(weighting="median", network=NETWORK)
    assert math.isinf(PFAController(network=NETWORK).best_personal_score)
