"""Every server rejects a bad client result by name and keeps nothing of it (issue 19, item 1).

Each controller runs its real loop (``run``: rounds, best-model tracking, checkpoints, final validation) on three
fake clients (:mod:`fake_transport`); ``client_b`` sends a bad result in every training round. With ``min_clients=2``
the run must log the rejection with the site and the reason, and end with exactly the files of a run in which
``client_b`` never answered; with every client needed it must stop with that reason and save no model.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import pytest
import torch
from fake_transport import all_finite, attach, load

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import STATE_FILE
from medfl.common.networks import build_network
from medfl.common.params import bundle
from medfl.common.pieces import PIECES_META, split_arrays
from medfl.common.protocol import NUM_TRAIN_SAMPLES, NUM_TRAIN_STEPS, NUM_VAL_SAMPLES
from medfl.fedavg.controller import FedAvgController
from medfl.federations.isic2019.protocol import CLASS_COUNTS, SAMPLES_PER_EPOCH
from medfl.fedmas.controller import FedMASController
from medfl.fedmas.protocol import PRIOR_SHA256, ROBUST_FACTOR
from medfl.fedsm.controller import FedSMController
from medfl.fedsm.moments import adam_moments
from medfl.fedsm.protocol import MOMENTS_NAME
from medfl.harmofl.amplitude_exchange import AMPLITUDE_KEY, AMPLITUDE_TASK, DIGEST_KEY, amplitude_digest
from medfl.harmofl.controller import HarmoFLController
from medfl.prrfl.controller import PFAController
from medfl.prrfl.protocol import TRAINED_METRICS

CLIENTS = ("client_a", "client_b", "client_c")
BAD = "client_b"
UNET = {"name": "unet", "args": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}
SELECTOR = {"name": "selector_cnn", "args": {"in_channels": 1, "num_classes": 3, "channels": [4]}}
VGG = {"name": "medfl.federations.dermoscopy.networks:vgg16_slim", "args": {"blocks": [[4], [4], [4], [4], [4]], "hidden_features": 4}}
CNN = {"name": "medfl.federations.medmnist.networks:medmnist_cnn", "args": {"in_channels": 1, "num_classes": 8}}
NUM_VAL = 4
COUNTS = {"correct": [1, 1, 0, 0, 0, 0, 0, 0], "total": [2, 2, 0, 0, 0, 0, 0, 0]}  # sums to NUM_VAL
AMPLITUDE = np.ones((1, 8, 8), np.float32)


def selector_moments() -> Dict[str, np.ndarray]:
    """The moments a client's filter adds, from a real selector after one Adam step."""
    selector = build_network(SELECTOR["name"], **SELECTOR["args"])
    optimizer = torch.optim.Adam(selector.parameters())
    selector(torch.rand(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    return bundle({MOMENTS_NAME: adam_moments(selector, optimizer)})


MOMENTS = selector_moments()


class Method:
    """One controller under test: how to build it, its config_train.json, and what an honest client answers."""

    def __init__(self, build: Callable, config: dict, metrics: Optional[dict] = None, train_meta=None, meta=None):
        self.build, self.config = build, config
        self.metrics = metrics or {"global": 0.5}
        self.train_meta, self.meta = train_meta or {}, meta or {}

    def answer(self, client: str, task: str, sent: FLModel) -> FLModel:
        if task == AMPLITUDE_TASK:
            return FLModel(params={AMPLITUDE_KEY: AMPLITUDE.copy()}, meta={NUM_TRAIN_SAMPLES: 10})
        if sent.params and AMPLITUDE_KEY in sent.params:  # the reference task
            return FLModel(params={}, meta={DIGEST_KEY: amplitude_digest(sent.params[AMPLITUDE_KEY])})
        meta = {NUM_VAL_SAMPLES: NUM_VAL, **self.meta}
        if task == "validate":
            return FLModel(metrics=dict(self.metrics), meta=meta)
        params = {k: np.asarray(v + 1, v.dtype) for k, v in sent.params.items() if not k.startswith(MOMENTS_NAME)}
        if "selector/0.conv.weight" in params:
            params.update({k: v.copy() for k, v in MOMENTS.items()})
        return FLModel(params=params, metrics=dict(self.metrics), current_round=sent.current_round,
                       meta={NUM_TRAIN_SAMPLES: 10 + CLIENTS.index(client), **meta, **self.train_meta})


METHODS = {
    "fedavg": Method(FedAvgController, {"network": UNET}),
    "fedsm": Method(FedSMController, {"network": UNET, "selector_network": SELECTOR},
                    metrics={"global": 0.5, "personal": 0.6, "selector": 0.7}, train_meta={NUM_TRAIN_STEPS: 10}),
    "harmofl": Method(HarmoFLController, {"network": UNET}),
    "prrfl": Method(PFAController, {"network": VGG},
                    metrics={"personal_macro_f1": 0.5, "personal_macro_auc": math.nan, "deputy_accuracy": 0.4},
                    train_meta={TRAINED_METRICS: {"personal_macro_f1": 0.5}}),
    "fedmas": Method(FedMASController, {"network": CNN}, train_meta={ROBUST_FACTOR: 0.2},
                     meta={SAMPLES_PER_EPOCH: 64, PRIOR_SHA256: "abc", CLASS_COUNTS: {"validation": COUNTS,
                                                                                      "testing": COUNTS}}),
}


def first_float_key(result: FLModel) -> str:
    """The first weight of the result that is a float array of more than one value (a conv weight)."""
    return next(k for k in sorted(result.params)
                if np.issubdtype(result.params[k].dtype, np.floating) and result.params[k].size > 1)


def set_entry(value_of: Callable[[np.ndarray], np.ndarray]):
    def corrupt(result: FLModel) -> None:
        key = first_float_key(result)
        result.params[key] = value_of(result.params[key])
    return corrupt


def with_nan(array, value=np.nan):
    array = array.copy()
    array.flat[0] = value
    return array


def set_meta(key, value):
    return lambda result: result.meta.update({key: value})


def set_metric(value):
    return lambda result: result.metrics.update({sorted(result.metrics)[0]: value})


def in_pieces(damage: Callable[[FLModel, str], None] = lambda result, key: None, piece_bytes: int = 64):
    """The result as a client's ``SplitLargeArrays`` sends it (pieces of ``piece_bytes``), then ``damage(result,
    key)`` done to the pieces of its first array ``key`` cut into more than two."""
    def corrupt(result: FLModel) -> None:
        pieces, manifest = split_arrays(result.params, piece_bytes)
        key = next(k for k in sorted(manifest) if manifest[k]["pieces"] > 2)
        result.params.clear()
        result.params.update(pieces)
        result.meta[PIECES_META] = manifest
        damage(result, key)
    return corrupt


def set_piece(index: int, value_of: Callable[[np.ndarray], np.ndarray]):
    def damage(result: FLModel, key: str) -> None:
        result.params[f"{key}#piece{index}"] = value_of(result.params[f"{key}#piece{index}"])
    return damage


# (corruption of client_b's training result, the reason the server must give), for every controller
NON_FINITE = r"\S+ holds 1 non-finite value\(s\) \(NaN or inf\) of \d+"
BAD_RESULTS = {
    "nan_weights": (set_entry(with_nan), NON_FINITE),
    "inf_weights": (set_entry(lambda a: with_nan(a, np.inf)), NON_FINITE),
    "broadcastable_shape": (set_entry(lambda a: np.zeros(1, a.dtype)),
                            r"\S+ has shape \(1,\) but \([\d, ]+\) is expected"),
    "integer_dtype": (set_entry(lambda a: a.astype(np.int64)), r"\S+ has dtype int64 but float32 is expected"),
    "missing_key": (lambda r: r.params.pop(first_float_key(r)), r"missing array\(s\) \['\S+'\]"),
    "extra_key": (lambda r: r.params.update({"global/extra": np.zeros(1, np.float32)}),
                  r"unexpected array\(s\) \['global/extra'\]"),
    "samples_1e9": (set_meta(NUM_TRAIN_SAMPLES, 1e9),
                    r"num_train_samples is 1000000000.0 \(float\), not an integer count"),
    "samples_negative": (set_meta(NUM_TRAIN_SAMPLES, -30), r"num_train_samples is -30, not a positive count"),
    "samples_nan": (set_meta(NUM_TRAIN_SAMPLES, math.nan), r"num_train_samples is nan \(float\), not an integer count"),
    "samples_zero": (set_meta(NUM_TRAIN_SAMPLES, 0), r"num_train_samples is 0, not a positive count"),
    "val_samples_float": (set_meta(NUM_VAL_SAMPLES, 4.0), r"num_val_samples is 4.0 \(float\), not an integer count"),
    "metric_1e9": (set_metric(1e9), r"metric \w+ = 1000000000.0 is outside \[0, 1\]"),
    "metric_nan": (set_metric(math.nan), r"metric \w+ is nan"),
    "wrong_round": (lambda r: setattr(r, "current_round", 7),
                    r"the result is for round 7, but the task was sent in round [01]"),
}
METHOD_BAD_RESULTS = {
    "fedsm": {
        "partial_moments": (lambda r: r.params.pop(sorted(MOMENTS)[0]),
                            r"selector Adam moments: \d+ of \d+ arrays sent, missing \['selector_adam/\S+'\]"),
        "nan_moment": (lambda r: r.params.update({sorted(MOMENTS)[0]: with_nan(MOMENTS[sorted(MOMENTS)[0]])}),
                       r"selector_adam/\S+ holds 1 non-finite value\(s\) \(NaN or inf\) of \d+"),
        "moment_step": (lambda r: r.params.update({f"{MOMENTS_NAME}/0.conv.weight.step": np.array(1.0, np.float32)}),
                        r"unexpected array\(s\) \['selector_adam/0.conv.weight.step'\]"),
        "steps_1e9": (set_meta(NUM_TRAIN_STEPS, 1e9), r"num_train_steps is 1000000000.0 \(float\), not an integer count"),
        "steps_missing": (lambda r: r.meta.pop(NUM_TRAIN_STEPS), r"the reply has no 'num_train_steps' in its meta"),
        "personal_variable_missing": (lambda r: r.params.pop(next(k for k in sorted(r.params) if k.startswith("personal/"))),
                                      r"missing array\(s\) \['personal/\S+'\]"),
        # arrays sent in pieces (medfl.common.pieces): each bad piece names its array, before any model is touched
        "piece_missing": (in_pieces(lambda r, key: r.params.pop(f"{key}#piece1")), r"\S+: piece 1 of \d+ is missing"),
        "piece_float64": (in_pieces(set_piece(0, lambda a: a.astype(np.float64))),
                          r"\S+: piece 0 of \d+ is a 1-D float64 array, not a 1-D float32 one"),
        "piece_2d": (in_pieces(set_piece(0, lambda a: a.reshape(1, -1))),
                     r"\S+: piece 0 of \d+ is a 2-D float32 array, not a 1-D float32 one"),
        "piece_short": (in_pieces(set_piece(1, lambda a: a[:-1])),
                        r"\S+: its \d+ pieces hold \d+ values, its shape \[[\d, ]+\] \d+"),
        "piece_extra": (in_pieces(lambda r, key: r.params.update({"global/x#piece0": np.zeros(1, np.float32)})),
                        r"global/x#piece0 is a piece of no array in the piece manifest"),
        "piece_and_whole": (in_pieces(lambda r, key: r.params.update({key: np.zeros(1, np.float32)})),
                            r"\S+ was sent both whole and in pieces"),
        "piece_manifest_dtype": (in_pieces(lambda r, key: r.meta[PIECES_META][key].update(dtype="O")),
                                 r"\S+: the piece manifest gives dtype 'O', not a numeric dtype"),
        "piece_nan": (in_pieces(set_piece(1, with_nan)), NON_FINITE),  # joined, then checked as ever
    },
    "prrfl": {
        "trained_metric_1e9": (lambda r: r.meta.update({TRAINED_METRICS: {"personal_macro_f1": 1e9}}),
                               r"trained_metrics metric personal_macro_f1 = 1000000000.0 is outside \[0, 1\]"),
        "trained_metric_nan": (lambda r: r.meta.update({TRAINED_METRICS: {"personal_macro_f1": math.nan}}),
                               r"trained_metrics metric personal_macro_f1 is nan"),
    },
    "fedmas": {
        "robust_factor_nan": (set_meta(ROBUST_FACTOR, math.nan), r"robust_factor is nan, not a finite number >= 0"),
        "robust_factor_negative": (set_meta(ROBUST_FACTOR, -0.5), r"robust_factor is -0.5, not a finite number >= 0"),
        "robust_factor_missing": (lambda r: r.meta.pop(ROBUST_FACTOR), r"the reply has no 'robust_factor' in its meta"),
        "samples_per_epoch_1e9": (set_meta(SAMPLES_PER_EPOCH, 1e9),
                                  r"samples_per_epoch is 1000000000.0 \(float\), not an integer count"),
        "more_correct_than_samples": (
            set_meta(CLASS_COUNTS, {"validation": {"correct": [3, 1, 0, 0, 0, 0, 0, 0], "total": COUNTS["total"]},
                                    "testing": COUNTS}),
            r"class_counts 'validation' has more correct predictions \[3, 1, 0, 0, 0, 0, 0, 0\] than samples "
            r"\[2, 2, 0, 0, 0, 0, 0, 0\]"),
        "counts_above_validation_size": (
            set_meta(CLASS_COUNTS, {"validation": {"correct": COUNTS["correct"], "total": [200, 2, 0, 0, 0, 0, 0, 0]},
                                    "testing": COUNTS}),
            r"class_counts 'validation' counts 202 samples, but the client reports 4 validation samples"),
    },
}
CASES = [(method, bad) for method in METHODS for bad in [*BAD_RESULTS, *METHOD_BAD_RESULTS.get(method, {})]]


def bad_result(method: str, bad: str):
    return {**BAD_RESULTS, **METHOD_BAD_RESULTS.get(method, {})}[bad]


def run(method: str, root: Path, corrupt: Optional[Callable], min_clients: int, num_rounds: int = 2):
    """Run ``method``'s controller; ``client_b``'s training results go through ``corrupt`` (``None``: it never
    answers a training task)."""
    spec = METHODS[method]

    def answer(client: str, task: str, sent: FLModel) -> Optional[FLModel]:
        result = spec.answer(client, task, sent)
        if client != BAD or task != "train":
            return result
        if corrupt is None:
            return None
        corrupt(result)
        return result

    controller = spec.build(num_rounds=num_rounds, min_clients=min_clients, seed=0, **spec.config)
    attach(controller, root, CLIENTS, answer, {**spec.config, "seed": 0})
    controller.run()
    return controller


@pytest.fixture(scope="module")
def silent_runs(tmp_path_factory):
    """Per method, the app folder of a run in which client_b never answers a training task."""
    cache: Dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in cache:
            root = tmp_path_factory.mktemp(f"silent_{method}")
            controller = run(method, root, None, min_clients=2)
            assert not controller.log["panic"] and not controller.log["error"], controller.log
            cache[method] = controller.app_dir
        return cache[method]

    return get


def saved_files(app_dir: Path) -> Dict[str, object]:
    """Every checkpoint and history file of a server's app folder, loaded; the server state without its run id, which
    each run draws afresh."""
    files = {}
    for path in sorted(app_dir.iterdir()):
        files[path.name] = load(path) if path.suffix == ".pt" else json.loads(path.read_text())
    files.get(STATE_FILE, {}).pop("run_id", None)
    return files


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    elif isinstance(a, list) and a and isinstance(a[0], dict):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("method, bad", CASES)
def test_a_bad_result_is_rejected_by_name_and_leaves_no_trace(method, bad, tmp_path, silent_runs):
    corrupt, reason = bad_result(method, bad)
    controller = run(method, tmp_path, corrupt, min_clients=2)
    assert not controller.log["panic"]
    errors = controller.log["error"]
    assert len(errors) == 2, errors  # both training rounds
    for round_number, line in enumerate(errors):
        assert re.fullmatch(rf"round {round_number}: rejected the result of {BAD}: {reason}", line), line
    assert any(f"continuing with 2 of 3 clients (min_clients=2); rejected the result of {BAD}" in w
               for w in controller.log["warning"])
    files = saved_files(controller.app_dir)
    assert all_finite(files)
    assert_same(files, saved_files(silent_runs(method)))  # nothing of client_b's result anywhere


def test_fedsm_results_sent_in_pieces_give_the_run_of_whole_results(tmp_path, silent_runs):
    """Every client's training result in pieces of 64 bytes: the saved models and histories are those of the run
    with whole results (bit-identical reassembly; the algorithm does not see the transfer)."""
    spec = METHODS["fedsm"]

    def answer(client: str, task: str, sent: FLModel) -> FLModel:
        result = spec.answer(client, task, sent)
        if task == "train":
            in_pieces()(result)
        return result

    def files(root: Path, reply: Callable) -> Dict[str, object]:
        controller = spec.build(num_rounds=2, min_clients=0, seed=0, **spec.config)
        attach(controller, root, CLIENTS, reply, {**spec.config, "seed": 0})
        controller.run()
        assert not controller.log["panic"] and not controller.log["error"], controller.log
        return saved_files(controller.app_dir)

    assert_same(files(tmp_path / "pieces", answer), files(tmp_path / "whole", spec.answer))


@pytest.mark.parametrize("method", METHODS)
def test_a_bad_result_stops_the_run_when_every_client_is_needed_and_no_model_is_saved(method, tmp_path):
    corrupt, reason = BAD_RESULTS["nan_weights"]
    controller = run(method, tmp_path, corrupt, min_clients=0)
    (panic,) = controller.log["panic"]
    assert re.fullmatch(rf"round 0: task 'train' got 2 results, needs 3; rejected the result of {BAD}: {reason}", panic)
    assert not list(controller.app_dir.glob("*_model.pt")) and not (controller.app_dir / "server_state.pt").exists()


def test_prrfl_nan_of_one_site_does_not_reach_the_others_through_pfa(tmp_path):
    """PFA mixes every deputy's amplitudes: one NaN would reach every site. The rejected one reaches none."""
    controller = run("prrfl", tmp_path, BAD_RESULTS["nan_weights"][0], min_clients=2)
    assert all(np.isfinite(v).all() for params in controller.models.values() for v in params.values())
    assert all(all_finite(load(path)) for path in controller.app_dir.glob("*.pt"))


def test_a_metric_of_1e9_never_becomes_the_best_model(tmp_path):
    controller = run("fedavg", tmp_path, set_metric(1e9), min_clients=2)
    best = load(controller.app_dir / "best_global_model.pt")
    assert best["score"] == pytest.approx(0.5) and controller.best_scores == {"global": pytest.approx(0.5)}


@pytest.mark.parametrize("reply, reason", [
    ({AMPLITUDE_KEY: with_nan(AMPLITUDE)},
     r"\[client_b\] amplitude holds 1 non-finite value\(s\) \(NaN or inf\) of 64"),
    ({AMPLITUDE_KEY: AMPLITUDE.astype(np.int64)}, r"\[client_b\] the amplitude must be a float array, got int64"),
    ({AMPLITUDE_KEY: AMPLITUDE[:, :4]}, r"clients' amplitude shapes differ: .*"),
])
def test_harmofl_a_bad_amplitude_stops_the_exchange_naming_the_site(reply, reason, tmp_path):
    honest = METHODS["harmofl"].answer

    def answer(client, task, sent):
        if client == BAD and task == AMPLITUDE_TASK:
            return FLModel(params=reply, meta={NUM_TRAIN_SAMPLES: 10})
        return honest(client, task, sent)

    controller = HarmoFLController(num_rounds=1, network=UNET)
    attach(controller, tmp_path, CLIENTS, answer, {"network": UNET, "seed": 0})
    controller.run()
    (panic,) = controller.log["panic"]
    assert re.fullmatch(rf"amplitude exchange: {reason}", panic), panic
    assert not list(controller.app_dir.glob("*.pt"))


@pytest.mark.parametrize("count, reason", [(1e9, r"is 1000000000.0 \(float\), not an integer count"),
                                           (-30, "is -30, not a positive count")])
def test_harmofl_a_bad_training_set_size_in_the_exchange_stops_it(count, reason, tmp_path):
    honest = METHODS["harmofl"].answer

    def answer(client, task, sent):
        if client == BAD and task == AMPLITUDE_TASK:
            return FLModel(params={AMPLITUDE_KEY: AMPLITUDE.copy()}, meta={NUM_TRAIN_SAMPLES: count})
        return honest(client, task, sent)

    controller = HarmoFLController(num_rounds=1, network=UNET)
    attach(controller, tmp_path, CLIENTS, answer, {"network": UNET, "seed": 0})
    controller.run()
    assert re.fullmatch(rf"amplitude exchange: \[client_b\] num_train_samples {reason}", controller.log["panic"][0])
