"""FedAvg/MedMNIST client and server without the simulator: Flower's sampling rule, the client's task steps, and
the server's round loop (sampling, example-weighted averaging, test evaluation at round 0 and after each round)."""

import json
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

from medfl.common.errors import DataError
from medfl.common.params import bundle, unbundle
from medfl.common.protocol import NUM_TRAIN_SAMPLES, NUM_VAL_SAMPLES
from medfl.common.sampling import num_fit_clients, sample_clients
from medfl.common.settings import ConfigError
from medfl.fedavg.medmnist import MedMNISTFedAvgController
from medfl.federations.medmnist.client import MedMNISTExecutor
from medfl.federations.medmnist.evaluation import TEST_METRICS_FILE, evaluate_classifier, mean_cross_entropy
from medfl.federations.medmnist.splits import prepare_client_splits

SITES = [f"site-{k}" for k in range(1, 5)]
SEED_JOB_TRAIN = Path(__file__).resolve().parents[1] / "jobs" / "fedavg_medmnist" / "app/config/config_train.json"


@pytest.fixture(scope="module")
def federation(tmp_path_factory, shared_data: Path) -> dict:
    """BreastMNIST over 4 clients and the seed job's config_train.json for it (absolute data paths, 1 epoch)."""
    root = tmp_path_factory.mktemp("medmnist_fedavg")
    npz = shared_data / "medmnist" / "breastmnist.npz"
    prepare_client_splits(npz, root / "splits", num_clients=len(SITES), alpha=1000.0, seed=0, dataset="breastmnist")
    config = {**json.loads(SEED_JOB_TRAIN.read_text()), "dataset": "breastmnist", "data_root": str(npz.parent),
              "datalist": str(root / "splits"), "local_epochs": 1, "num_threads": 1, "device": "cpu"}
    (root / "config").mkdir()
    (root / "config" / "config_train.json").write_text(json.dumps(config))
    return {"root": root, "config": config}


# ------------------------------------------------------------------ sampling
@pytest.mark.parametrize("available,fraction,minimum,expected", [(3, 0.1, 3, 3), (100, 0.1, 3, 10), (100, 0.1, 10, 10),
                                                                 (4, 0.5, 1, 2), (7, 0.5, 1, 3)])
def test_number_of_sampled_clients_follows_flower(available, fraction, minimum, expected):
    assert num_fit_clients(available, fraction, minimum) == expected
    clients = [f"site-{k}" for k in range(1, available + 1)]
    assert len(sample_clients(clients, 0, fraction, minimum, seed=0)) == expected


def test_sampling_is_seeded_per_round_without_replacement_and_uniform():
    clients = [f"site-{k}" for k in range(1, 11)]
    rounds = [sample_clients(clients, r, 0.3, 1, seed=0) for r in range(2000)]
    assert rounds[:5] == [sample_clients(list(reversed(clients)), r, 0.3, 1, seed=0) for r in range(5)]
    assert all(len(set(chosen)) == 3 == len(chosen) for chosen in rounds)
    assert len({tuple(chosen) for chosen in rounds[:10]}) > 1, "the sample must change between rounds"
    assert rounds[:10] != [sample_clients(clients, r, 0.3, 1, seed=1) for r in range(10)]
    counts = np.array([sum(c in chosen for chosen in rounds) for c in clients])
    assert np.all(np.abs(counts / len(rounds) - 0.3) < 0.05), counts


def test_sampling_errors():
    with pytest.raises(ValueError, match=r"needs 3 clients \(fraction_fit=0.1, min_fit_clients=3\) but only 2"):
        sample_clients(["site-1", "site-2"], 0, 0.1, 3, seed=0)
    with pytest.raises(ConfigError, match=r"config_fed_server.json: 'fraction_fit': Input should be greater than 0"):
        MedMNISTFedAvgController(fraction_fit=0.0, data_root="/data")
    with pytest.raises(ConfigError, match="'min_fit_clients': Input should be greater than or equal to 1"):
        MedMNISTFedAvgController(min_fit_clients=0, data_root="/data")


def test_mean_cross_entropy_equals_torch():
    logits = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert mean_cross_entropy(labels.numpy(), torch.softmax(logits, 1).numpy()) == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(mean_cross_entropy(np.array([0]), np.array([[0.0, 1.0]], dtype=np.float32)))


# ------------------------------------------------------------------ client
def _client(config: dict, site: str = "site-1") -> MedMNISTExecutor:
    client = configure(MedMNISTExecutor(), config, site)
    client.setup(FLContext())
    return client


def test_client_validates_then_trains_with_a_fresh_sgd_each_round(federation):
    client = _client(federation["config"])
    split = json.loads((federation["root"] / "splits" / "site-1.json").read_text())
    assert client.num_samples("training") == len(split["train"]) and client.num_samples("validation") == len(split["val"])
    assert len(client.train_loader) == math.ceil(len(split["train"]) / 128), "the seed keeps the last partial batch"
    assert client.val_loader.batch_size == 50
    assert next(iter(client.val_loader))["image"].shape[1:] == (1, 28, 28)
    metrics = client.evaluate("validation")
    assert set(metrics) == {"global", "global_loss", "global_auc"} and 0.0 <= metrics["global"] <= 1.0
    seed_metrics = evaluate_classifier(client.model, client.val_loader, client.device)
    assert metrics == {"global": seed_metrics["accuracy"], "global_loss": seed_metrics["loss"],
                       "global_auc": seed_metrics["auc"]}
    before = {k: v.clone() for k, v in client.model.state_dict().items()}
    optimizers = []
    for _ in range(2):
        client.train_round(Signal(), FLContext())
        optimizers.append(client.optimizer)
    assert optimizers[0] is not optimizers[1]
    assert optimizers[1].defaults["lr"] == 0.001 and optimizers[1].defaults["momentum"] == 0.9
    after = client.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert set(unbundle(client.export_params(FLContext()))) == {"global"}


def test_client_data_errors_name_the_site_and_file(federation):
    with pytest.raises(DataError, match=r"\[site-9\] .*site-9\.json: client split file not found"):
        _client(federation["config"], site="site-9")
    wrong = {**federation["config"], "network": {"name": "medmnist_cnn", "args": {"in_channels": 3}}}
    with pytest.raises(ValueError, match="network args in_channels=3 but the data has 1"):
        _client(wrong)


# ------------------------------------------------------------------ server
class _LoopController(MedMNISTFedAvgController):
    """The real controller with the NVFlare transport replaced: each client returns the global model + its number."""

    def __init__(self, root: Path, **kwargs):
        super().__init__(**kwargs)
        workspace = SimpleNamespace(get_app_config_dir=lambda job: str(root / "config"),
                                    get_app_dir=lambda job: str(root / "app"), get_run_dir=lambda job: str(root))
        self.engine = SimpleNamespace(get_workspace=lambda: workspace,
                                      get_clients=lambda: [SimpleNamespace(name=s) for s in SITES])
        self.fl_ctx = FLContext()
        self.events = []

    def scatter_and_gather(self, task, clients, round_number):
        self.events.append((task, round_number, clients))
        sent = self.models["global"]
        return {c: FLModel(params=bundle({"global": {k: v + SITES.index(c) for k, v in sent.items()}}),
                           metrics={"global": 0.5}, meta={NUM_TRAIN_SAMPLES: 10 * (SITES.index(c) + 1),
                                                          NUM_VAL_SAMPLES: 2})
                for c in clients}

    def aggregate(self, results):
        self.events.append(("aggregate", {k: v.copy() for k, v in self.models["global"].items()}))
        super().aggregate(results)

    def server_evaluate(self, step):
        self.events.append(("evaluate", step))
        super().server_evaluate(step)


def test_server_samples_averages_by_examples_and_tests_at_round_0_and_after_each_round(federation, tmp_path):
    root = tmp_path
    (root / "app").mkdir()
    (root / "config").symlink_to(federation["root"] / "config")
    server = {k: federation["config"][k] for k in ("dataset", "data_root", "eval_batch_size", "network", "seed")}
    controller = _LoopController(root, num_rounds=2, fraction_fit=0.5, min_fit_clients=1, sampling_seed=0, **server)
    controller.run()

    kinds = [e[0] for e in controller.events]
    assert kinds == ["evaluate", "train", "aggregate", "evaluate", "train", "aggregate", "evaluate", "validate"]
    trained = [e[2] for e in controller.events if e[0] == "train"]
    assert trained == [sample_clients(SITES, r, 0.5, 1, seed=0) for r in range(2)] and trained[0] != trained[1]
    before = controller.events[kinds.index("aggregate", 3)][1]
    offset = sum(SITES.index(c) * 10 * (SITES.index(c) + 1) for c in trained[1]) / sum(
        10 * (SITES.index(c) + 1) for c in trained[1])
    for key, value in controller.models["global"].items():
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_allclose(value, before[key] + offset, rtol=1e-5, atol=1e-5)

    history = json.loads((root / "app" / TEST_METRICS_FILE).read_text())
    assert [h["step"] for h in history] == [0, 1, 2]
    assert [h["trained_by"] for h in history] == [[], trained[0], trained[1]]
    assert all(0.0 <= h["accuracy"] <= 1.0 and h["loss"] > 0 for h in history)
    assert (root / "app" / "best_global_model.pt").is_file() and (root / "app" / "last_global_model.pt").is_file()
    assert torch.load(root / "app" / "server_state.pt", weights_only=True)["extra"]["test_history"][-1]["step"] == 1


def test_task_check_period_reaches_nvflare():
    """RoundController passes task_check_period to NVFlare's ModelController (0.5 s there by default)."""
    assert MedMNISTFedAvgController(data_root="/data")._task_check_period == 0.5
    assert MedMNISTFedAvgController(data_root="/data", task_check_period=0.1)._task_check_period == 0.1


def _medmnist_run(federation, root: Path, corrupt):
    """The real controller on 4 fake clients that return the global model + 1; site-2's training results go
    through ``corrupt`` (``None``: it never answers them)."""
    from fake_transport import attach

    def answer(client, task, sent):
        meta = {NUM_VAL_SAMPLES: 5}
        if task == "validate":
            return FLModel(metrics={"global": 0.5, "global_loss": 0.7}, meta=meta)
        params = {k: np.asarray(v + 1, v.dtype) for k, v in sent.params.items()}
        result = FLModel(params=params, metrics={"global": 0.5, "global_loss": 0.7}, current_round=sent.current_round,
                         meta={**meta, NUM_TRAIN_SAMPLES: 10})
        if client != "site-2":
            return result
        return corrupt(result) if corrupt else None

    server = {k: federation["config"][k] for k in ("dataset", "data_root", "eval_batch_size", "network", "seed")}
    controller = MedMNISTFedAvgController(num_rounds=2, fraction_fit=1.0, min_fit_clients=1, min_clients=3, **server)
    attach(controller, root, SITES, answer, federation["config"])
    controller.run()
    return controller


def _with(result, **changes):
    for name, value in changes.items():
        getattr(result, name).update(value)
    return result


@pytest.mark.parametrize("corrupt, reason", [
    (lambda r: _with(r, metrics={"global_loss": -1.0}), "metric global_loss = -1.0 is outside [0, inf]"),
    (lambda r: _with(r, params={k: np.full_like(v, np.nan) for k, v in r.params.items() if v.dtype.kind == "f"}),
     "global/fc.0.bias holds 128 non-finite value(s) (NaN or inf) of 128"),
])
def test_server_rejects_a_bad_result_and_keeps_nothing_of_it(federation, tmp_path, corrupt, reason):
    controller = _medmnist_run(federation, tmp_path / "bad", corrupt)
    assert controller.log["error"] == [f"round {r}: rejected the result of site-2: {reason}" for r in range(2)]
    silent = _medmnist_run(federation, tmp_path / "silent", None)
    for key, value in silent.models["global"].items():
        assert np.array_equal(controller.models["global"][key], value), key
    for name in ("last_global_model.pt", "best_global_model.pt"):
        got, expected = (torch.load(c.app_dir / name, weights_only=True) for c in (controller, silent))
        assert all(torch.equal(got["state_dict"][k], v) for k, v in expected["state_dict"].items()), name
    history = json.loads((controller.app_dir / TEST_METRICS_FILE).read_text())
    assert all(math.isfinite(h["loss"]) for h in history)
