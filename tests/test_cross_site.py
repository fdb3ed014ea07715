"""Cross-site evaluation: the servers send every final model to every site, check the scores that come back and write
the matrix; the clients score the models they receive (FedSM's super model, PRR-FL's personalised models)."""

from __future__ import annotations

import csv
import math
import re
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from conftest import PROSTATE_CLIENTS
from fake_transport import attach
from helpers import configure

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.cross_site import read_cross_site, write_cross_site
from medfl.common.networks import build_network
from medfl.common.params import bundle, to_numpy, unbundle
from medfl.common.protocol import (
    CROSS_SITE_METRIC,
    CROSS_SITE_SPLIT,
    NUM_EVAL_SAMPLES,
    NUM_TRAIN_SAMPLES,
    NUM_TRAIN_STEPS,
    NUM_VAL_SAMPLES,
    RUN_ID,
)
from medfl.fedavg.controller import FedAvgController
from medfl.fedsm.controller import FedSMController
from medfl.fedsm.executor import FedSMExecutor
from medfl.fedsm.protocol import PERSONAL_OF_LABEL, SELECT_THRESHOLD, SUPER_MODEL
from medfl.prrfl.controller import PFAController
from medfl.prrfl.protocol import PERSONAL, TRAINED_METRICS

CLIENTS = ("client_a", "client_b", "client_c")
UNET = {"name": "unet", "args": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}
SELECTOR = {"name": "selector_cnn", "args": {"in_channels": 1, "num_classes": 3, "channels": [4]}}
VGG = {"name": "medfl.federations.dermoscopy.networks:vgg16_slim",
       "args": {"blocks": [[4], [4], [4], [4], [4]], "hidden_features": 4}}
FEDSM_ROWS = ["global", *(f"personal_{c}" for c in CLIENTS), SUPER_MODEL]


def score(client: str, model: str) -> float:
    return round(0.1 + 0.1 * CLIENTS.index(client) + 0.01 * len(model), 4)


def honest(client: str, task: str, sent: FLModel, received: Dict[str, FLModel]) -> FLModel:
    """A client of the FedAvg, FedSM and PRR-FL servers: training returns the payload plus one, the cross-site task
    one Dice score per model it received."""
    if task == "cross_evaluate":
        received[client] = sent
        models = unbundle(sent.params)
        return FLModel(metrics={f"{m}_dice": score(client, m) for m in models},
                       meta={NUM_EVAL_SAMPLES: 5, CROSS_SITE_METRIC: "dice"})
    if task == "submit_personal":
        return FLModel(params=bundle({PERSONAL: to_numpy(build_network(VGG["name"], **VGG["args"]).state_dict())}))
    meta = {NUM_VAL_SAMPLES: 4, NUM_TRAIN_STEPS: 10}
    if task == "validate":
        return FLModel(metrics={"global": 0.5}, meta=meta)
    params = {k: np.asarray(v + 1, v.dtype) for k, v in sent.params.items()}
    return FLModel(params=params, metrics={"global": 0.5}, current_round=sent.current_round,
                   meta={NUM_TRAIN_SAMPLES: 10, TRAINED_METRICS: {"personal_macro_f1": 0.5}, **meta})


def run(controller, root, corrupt=None):
    received: Dict[str, FLModel] = {}

    def answer(client, task, sent) -> Optional[FLModel]:
        result = honest(client, task, sent, received)
        if corrupt is not None and task == "cross_evaluate" and client == "client_b":
            corrupt(result)
        return result

    attach(controller, root, CLIENTS, answer, {"seed": 0})
    controller.run()
    return controller, received


def test_fedsm_matrix_of_global_personalised_and_super_models(tmp_path):
    controller, received = run(FedSMController(num_rounds=1, network=UNET, selector_network=SELECTOR,
                                               cross_site_evaluation=True, select_threshold=0.8), tmp_path)
    assert not controller.log["panic"] and not controller.log["error"], controller.log
    sent = received["client_a"]
    assert sent.meta == {CROSS_SITE_SPLIT: "testing", SELECT_THRESHOLD: 0.8, RUN_ID: controller.run_id}
    models = unbundle(sent.params)
    assert sorted(models) == sorted(FEDSM_ROWS)
    super_parts = unbundle(models[SUPER_MODEL])
    assert sorted(super_parts) == ["global", *(f"{PERSONAL_OF_LABEL}{i}" for i in range(3)), "selector"]
    for label, client in enumerate(CLIENTS):  # the personalised models in the super model are those of their rows
        own = unbundle(models[f"personal_{client}"])["global"]
        assert all(np.array_equal(own[k], super_parts[f"{PERSONAL_OF_LABEL}{label}"][k]) for k in own)
    metric, matrix = read_cross_site(controller.app_dir)
    assert metric == "dice"
    assert matrix == {m: {c: score(c, m) for c in CLIENTS} for m in sorted(FEDSM_ROWS)}
    with open(controller.app_dir / "cross_site.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["model", *CLIENTS, "mean"] and [r[0] for r in rows[1:]] == sorted(FEDSM_ROWS)
    mean = sum(score(c, "global") for c in CLIENTS) / 3
    assert rows[1][-1] == f"{mean:.4f}"
    markdown = (controller.app_dir / "cross_site.md").read_text()
    assert "| model | client_a | client_b | client_c | mean |" in markdown
    assert (controller.app_dir / "cross_site.png").read_bytes()[:4] == b"\x89PNG"


def test_prrfl_matrix_of_the_personalised_models_the_clients_send(tmp_path):
    controller, received = run(PFAController(num_rounds=1, network=VGG, cross_site_evaluation=True), tmp_path)
    assert not controller.log["panic"] and not controller.log["error"], controller.log
    _, matrix = read_cross_site(controller.app_dir)
    assert sorted(matrix) == [f"personal_{c}" for c in CLIENTS]
    assert sorted(unbundle(unbundle(received["client_c"].params)["personal_client_a"])) == [PERSONAL]


@pytest.mark.parametrize("corrupt, reason", [
    (lambda r: r.metrics.update({"global_dice": 1.5}), r"metric global_dice = 1.5 is outside \[0, 1\]"),
    (lambda r: r.metrics.update({"global_dice": math.nan}), "metric global_dice is nan"),
    (lambda r: r.metrics.pop("global_dice"), r"scores \[\] sent, but \['global_dice'\] expected"),
    (lambda r: r.meta.update({CROSS_SITE_METRIC: "iou"}), r"cross_site_metric is 'iou', not one of \[.*\]"),
    (lambda r: r.meta.update({NUM_EVAL_SAMPLES: 0}), "num_eval_samples is 0, not a positive count"),
    (lambda r: setattr(r, "params", {"global/w": np.zeros(1, np.float32)}), r"unexpected array\(s\) \['global/w'\]"),
])
def test_a_bad_cross_site_reply_is_rejected_and_no_matrix_is_written(corrupt, reason, tmp_path):
    controller, _ = run(FedAvgController(num_rounds=1, network=UNET, cross_site_evaluation=True), tmp_path, corrupt)
    (error,) = controller.log["error"]
    assert re.fullmatch(rf"round 1: rejected the result of client_b: {reason}", error), error
    (panic,) = controller.log["panic"]
    assert "task 'cross_evaluate' got 2 results, needs 3" in panic
    assert not list(controller.app_dir.glob("cross_site.*"))


def test_without_the_setting_no_cross_site_task_is_sent(tmp_path):
    controller, received = run(FedAvgController(num_rounds=1, network=UNET), tmp_path)
    assert not received and not list(controller.app_dir.glob("cross_site.*"))


def test_the_matrix_files_round_trip(tmp_path):
    matrix = {"global": {"b": 0.5, "a": 0.25}, "personal_a": {"a": 0.75, "b": math.nan}}
    write_cross_site(matrix, "macro_auc", tmp_path)
    metric, read = read_cross_site(tmp_path)
    assert metric == "macro_auc" and read["global"] == {"a": 0.25, "b": 0.5} and math.isnan(read["personal_a"]["b"])
    assert "| personal_a | 0.7500 | nan | 0.7500 |" in (tmp_path / "cross_site.md").read_text()


TINY_UNET = {"name": "unet", "args": {"in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2],
                                      "num_res_units": 0}}


@pytest.fixture
def fedsm_client(demo_prostate, one_torch_thread):
    config = {"data_root": str(demo_prostate / "dataset_2D"), "datalist": str(demo_prostate / "datalist_2D"),
              "network": TINY_UNET, "optimizer": {"name": "adam", "lr": 1e-3}, "augment": False, "batch_size": 8,
              "selector_network": {**SELECTOR, "args": {**SELECTOR["args"], "in_channels": 1}},
              "selector_optimizer": {"name": "adam", "lr": 1e-3}}
    client = configure(FedSMExecutor(), config, PROSTATE_CLIENTS[1])
    client.setup(FLContext())
    return client


def test_fedsm_client_scores_the_super_model_on_its_testing_split(fedsm_client):
    torch.manual_seed(0)
    unets = [to_numpy(build_network(TINY_UNET["name"], **TINY_UNET["args"]).state_dict()) for _ in range(4)]
    selector = to_numpy(build_network(SELECTOR["name"], **SELECTOR["args"]).state_dict())
    parts = {"global": unets[0], "selector": selector, **{f"{PERSONAL_OF_LABEL}{i}": unets[i + 1] for i in range(3)}}
    models = {"global": bundle({"global": unets[0]}), "personal_x": bundle({"global": unets[2]}),
              SUPER_MODEL: bundle(parts)}
    fedsm_client.task_meta = {SELECT_THRESHOLD: 1.0}
    scores = fedsm_client.cross_evaluate(models, "testing", FLContext())
    assert "testing" in fedsm_client.datasets and len(fedsm_client.datasets["testing"]) > 0
    assert scores[SUPER_MODEL] == scores["global"]  # threshold 1: the super model is its global model
    fedsm_client.task_meta = {SELECT_THRESHOLD: 0.0}  # every image to the personalised model the selector picks
    routed = fedsm_client.cross_evaluate(models, "testing", FLContext())
    assert all(0.0 <= v <= 1.0 for v in routed.values()) and routed["global"] == scores["global"]
    reply = fedsm_client.cross_site_reply(FLModel(params=bundle(models), meta={SELECT_THRESHOLD: 1.0}), FLContext())
    assert reply.meta == {NUM_EVAL_SAMPLES: len(fedsm_client.datasets["testing"]), CROSS_SITE_METRIC: "dice"}
    assert sorted(reply.metrics) == ["global_dice", "personal_x_dice", "super_dice"]
